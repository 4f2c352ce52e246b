"""Index runs killed with SIGKILL at several points, then re-run.

The writer publishes a unit by building it on a scratch branch and moving the
year branch once, conditionally. So whatever instant a run dies at, the year
branch is either the previous complete snapshot or the new complete one:
every tile in its table opens and equals ``np.load`` of its source, the
table and the groups agree, and re-running the same command finishes the job
without indexing a tile twice or losing one. Scratch branches left by killed
runs are deleted by a later run once they are older than ``--scratch-max-age``.

The runs are real ``tessera-vz index`` processes, killed right after they log
(``-v``) that they entered a phase; the header phase is slowed by a proxy so
the kill lands inside it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import icechunk as ic
import numpy as np
import pytest
import xarray as xr
import zarr

from tessera_vz.core.layout import WORK_PREFIX, repo_name
from tessera_vz.testing.faults import Fault, FaultProxy
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import TileSpec, make_tree, write_manifest

YEAR = 2024
BBOX = (0.6, 49.6, 1.0, 50.0)  # 16 cells in UTM zone 31 north
ZONE = 31


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[TileSpec]]:
    root = tmp_path_factory.mktemp("interrupted-tree")
    specs = make_tree(root, bbox=BBOX, years=(YEAR,), bands=2)
    assert len(specs) == 16
    return root, specs


@pytest.fixture
def proxy(tree: tuple[Path, list[TileSpec]]) -> Iterator[FaultProxy]:
    with NginxServer(tree[0]) as server, FaultProxy(server.url) as p:
        yield p


def _argv(proxy: FaultProxy, root: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "tessera_vz.cli", "-v", "index", proxy.url,
        "--out", str(out), "--manifest", str(root / "manifest.parquet"),
        "--batch-tiles", "4", "--concurrency", "4", "--quiet", *extra,
    ]  # fmt: skip


def run_and_kill(argv: list[str], pattern: str, occurrence: int = 1, timeout: float = 60) -> str:
    """Start ``argv``, SIGKILL it after ``pattern`` appears ``occurrence`` times on stderr.

    Returns the stderr seen. Fails if the process exits before the line shows.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    hits = 0
    killed = threading.Event()
    timer = threading.Timer(timeout, lambda: (killed.set(), proc.kill()))
    timer.start()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if re.search(pattern, line):
                hits += 1
                if hits == occurrence:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        proc.wait(timeout=30)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(seen)
    assert not killed.is_set(), f"run did not reach {pattern!r} in {timeout}s:\n{text}"
    assert hits == occurrence, f"run ended before {pattern!r} #{occurrence}:\n{text}"
    assert proc.returncode == -signal.SIGKILL
    return text


def _repo(out: Path) -> ic.Repository:
    storage = ic.local_filesystem_storage(str(out / repo_name(ZONE)))
    wanted = ic.Repository.fetch_config(storage).virtual_chunk_containers or {}
    creds = ic.containers_credentials({p: ic.credentials.HttpAccess for p in wanted})
    return ic.Repository.open(storage, authorize_virtual_chunk_access=creds)


def check_consistent(
    out: Path, root: Path, specs: list[TileSpec], stale: frozenset[str] = frozenset()
) -> list[str]:
    """Assert the year branch is a complete snapshot; return its tile names.

    Tiles in ``stale`` had their source touched after the branch's snapshot
    was indexed: their reads must fail loudly instead of returning bytes.
    """
    if not (out / repo_name(ZONE)).exists():
        return []
    repo = _repo(out)
    if str(YEAR) not in repo.list_branches():
        return []
    store = repo.readonly_session(branch=str(YEAR)).store
    table = xr.open_zarr(store, group="tiles", consolidated=False, zarr_format=3).load()
    names = [str(n) for n in table.tile.values]
    assert len(names) == len(set(names)), "a tile is listed twice"
    groups = sorted(k for k in zarr.open_group(store, mode="r").group_keys() if k != "tiles")
    assert groups == sorted(names), "tile groups and the tiles table disagree"
    by_name = {s.name: s for s in specs}
    for name in names:
        ds = xr.open_zarr(store, group=name, consolidated=False, zarr_format=3)
        spec = by_name[name]
        if name in stale:
            with pytest.raises(Exception, match="checksum of the object"):
                ds.embeddings.values  # noqa: B018
            continue
        np.testing.assert_array_equal(ds.embeddings.values, np.load(root / spec.emb_path))
        np.testing.assert_array_equal(ds.scales.values, np.load(root / spec.scales_path))
    return names


def scratch_branches(out: Path) -> list[str]:
    return sorted(b for b in _repo(out).list_branches() if b.startswith(WORK_PREFIX))


def test_killed_runs_never_publish_half_a_unit(
    tree: tuple[Path, list[TileSpec]], proxy: FaultProxy, tmp_path: Path
) -> None:
    root, specs = tree
    out = tmp_path / "index"
    keep = _argv(proxy, root, out)  # scratch branches of the killed runs survive

    # 1. Killed while reading headers (slowed down by the proxy): nothing written.
    proxy.set_faults([Fault("delay", path=".npy", seconds=0.2)])
    run_and_kill(keep, r"reading 32 headers")
    proxy.set_faults([])
    assert check_consistent(out, root, specs) == []

    # 2. Killed while writing metadata of the second batch: only a scratch branch.
    run_and_kill(keep, r"writing batch 2/4")
    assert check_consistent(out, root, specs) == []
    assert len(scratch_branches(out)) == 1

    # 3. Killed right as a batch commits (amend) to the scratch branch.
    run_and_kill(keep, r"committing to scratch branch", occurrence=3)
    assert check_consistent(out, root, specs) == []
    assert len(scratch_branches(out)) == 2

    # 4. A complete run: publishes all 16 tiles and, told that scratch branches
    #    are stale after 0 s, deletes the two left by the killed runs.
    done = subprocess.run(
        [*keep, "--scratch-max-age", "0", "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("deleted stale scratch branch") == 2
    assert sorted(check_consistent(out, root, specs)) == sorted(s.name for s in specs)
    assert scratch_branches(out) == []
    tip = _repo(out).lookup_branch(str(YEAR))

    # 5. Change 6 tiles (new mtime, same bytes) and kill the re-index mid-commit,
    #    while it folds its batches, then just as it publishes: the year branch
    #    stays at 16 correct tiles.
    for s in specs[:6]:
        os.utime(root / s.emb_path, (time.time() + 10, time.time() + 10))
    write_manifest(root, specs)  # the inventory shows the change, so they are probed
    touched = frozenset(s.name for s in specs[:6])
    run_and_kill(keep, r"committing to scratch branch", occurrence=1)
    assert _repo(out).lookup_branch(str(YEAR)) == tip
    assert len(check_consistent(out, root, specs, stale=touched)) == 16
    # Killed while garbage collection folds the two batches into one snapshot.
    run_and_kill(keep, r"folding 2 batches")
    assert _repo(out).lookup_branch(str(YEAR)) == tip
    assert len(check_consistent(out, root, specs, stale=touched)) == 16
    run_and_kill(keep, r"publishing")
    published = _repo(out).lookup_branch(str(YEAR)) != tip
    names = check_consistent(out, root, specs, stale=frozenset() if published else touched)
    assert sorted(names) == sorted(s.name for s in specs)

    # 6. Re-running the same command finishes the job: the 6 tiles are indexed
    #    once (or were, if the kill came after the branch moved), none lost.
    done = subprocess.run(
        [*keep, "--scratch-max-age", "0"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert sorted(check_consistent(out, root, specs)) == sorted(s.name for s in specs)
    assert scratch_branches(out) == []
    assert "deleted stale scratch branch" in done.stderr
    if published:
        assert "nothing changed" in done.stderr
    else:
        assert "writing batch 1/2 (4 tiles)" in done.stderr
