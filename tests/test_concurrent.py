"""Two ``tessera-vz index`` processes writing to the same index at once.

Units of (zone, year) are independent branches, so two runs on different
years of one zone both land, and ``main``'s description (rewritten by both)
converges to list both years. Two runs on the *same* unit race to move the
year branch: Icechunk's conditional branch update lets exactly one win, and
the other reports a clear conflict for that unit (exit 1) and publishes
nothing; or, if it started after the winner finished, finds nothing to do.

Icechunk warns that its local-filesystem storage is not safe for concurrent
commits, and indeed two processes committing to one local repository were
seen to lose a ref update (a scratch branch came back after its deletion).
So on a local file system the units of one zone take turns on a ``flock``
(``indexer/locks.py``), and the same-unit race there usually ends with the
second run finding nothing to do; the last test replays the losing writer
deterministically against Icechunk's conditional branch update, which is what
protects S3 repositories. Each process scenario is repeated, since a race that
passes once proves little.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import icechunk as ic
import numpy as np
import pytest
import xarray as xr
import zarr

from tessera_vz.core.layout import WORK_PREFIX, repo_name
from tessera_vz.testing.tiles import TileSpec, make_tree

BBOX = (0.6, 49.8, 1.0, 50.0)  # 8 cells in UTM zone 31 north
ZONE = 31
ROUNDS = 2


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[TileSpec]]:
    root = tmp_path_factory.mktemp("concurrent-tree")
    specs = make_tree(root, bbox=BBOX, years=(2023, 2024), bands=2, manifest=False)
    assert len(specs) == 16
    return root, specs


def _start(root: Path, out: Path, years: str) -> subprocess.Popen[str]:
    argv = [
        sys.executable, "-m", "tessera_vz.cli", "index", str(root), "--out", str(out),
        "--years", years, "--batch-tiles", "2", "--json", "--quiet",
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _both(root: Path, out: Path, years_a: str, years_b: str) -> list[tuple[int, dict, str]]:
    procs = [_start(root, out, years_a), _start(root, out, years_b)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        results.append((p.returncode, json.loads(stdout) if stdout.strip() else {}, stderr))
    return results


def _repo(out: Path) -> ic.Repository:
    storage = ic.local_filesystem_storage(str(out / repo_name(ZONE)))
    wanted = ic.Repository.fetch_config(storage).virtual_chunk_containers or {}
    creds = ic.containers_credentials({p: ic.credentials.LocalFileSystemAccess for p in wanted})
    return ic.Repository.open(storage, authorize_virtual_chunk_access=creds)


def _check_year(out: Path, root: Path, specs: list[TileSpec], year: int) -> None:
    """The year branch holds every tile once, table and groups agree, bytes are right."""
    store = _repo(out).readonly_session(branch=str(year)).store
    table = xr.open_zarr(store, group="tiles", consolidated=False, zarr_format=3).load()
    names = sorted(str(n) for n in table.tile.values)
    expected = sorted(s.name for s in specs if s.year == year)
    assert names == expected
    groups = sorted(k for k in zarr.open_group(store, mode="r").group_keys() if k != "tiles")
    assert groups == expected
    for s in (s for s in specs if s.year == year):
        ds = xr.open_zarr(store, group=s.name, consolidated=False, zarr_format=3)
        np.testing.assert_array_equal(ds.embeddings.values, np.load(root / s.emb_path))


def _main_years(out: Path) -> dict[str, str]:
    store = _repo(out).readonly_session(branch="main").store
    return dict(zarr.open_group(store, mode="r").attrs["tessera:years"])


def test_different_units_both_land(tree: tuple[Path, list[TileSpec]], tmp_path: Path) -> None:
    root, specs = tree
    for i in range(ROUNDS):
        out = tmp_path / f"index{i}"
        results = _both(root, out, "2023", "2024")
        for code, doc, stderr in results:
            assert code == 0, (doc, stderr)
            assert doc["indexed"] == 8 and len(doc["commits"]) == 1
        _check_year(out, root, specs, 2023)
        _check_year(out, root, specs, 2024)
        assert _main_years(out) == {"2023": "2023-v1", "2024": "2024-v1"}
        assert not any(b.startswith(WORK_PREFIX) for b in _repo(out).list_branches())


def _same_unit_outcome(results: list[tuple[int, dict, str]]) -> None:
    """One run published; the other conflicted cleanly or found nothing left to do."""
    codes = sorted(code for code, _, _ in results)
    committed = [doc for _, doc, _ in results if doc.get("commits")]
    assert len(committed) == 1, results
    if codes == [0, 1]:
        loser = next(doc for code, doc, _ in results if code == 1)
        assert loser["commits"] == []
        (failure,) = loser["failed"]
        assert "another index run published this year" in failure["reason"]
        assert "Re-run the same command" in failure["reason"]
    else:
        assert codes == [0, 0], results
        idle = next(doc for _, doc, _ in results if not doc.get("commits"))
        assert idle["indexed"] == 0 and idle["failed"] == []


def test_same_unit_lands_once_or_conflicts(
    tree: tuple[Path, list[TileSpec]], tmp_path: Path
) -> None:
    root, specs = tree
    outcomes = []
    for i in range(ROUNDS):
        # A new year branch (creation races) ...
        out = tmp_path / f"index{i}"
        results = _both(root, out, "2024", "2024")
        _same_unit_outcome(results)
        outcomes.append(sorted(c for c, _, _ in results))
        _check_year(out, root, specs, 2024)
        assert sorted(t for t in _repo(out).list_tags()) == ["2024-v1"]
        # ... and an existing one (the conditional move races).
        for s in specs:
            if s.year == 2024 and s.lon < 0.8:
                t = (root / s.emb_path).stat().st_mtime + 100
                os.utime(root / s.emb_path, (t, t))
        results = _both(root, out, "2024", "2024")
        _same_unit_outcome(results)
        outcomes.append(sorted(c for c, _, _ in results))
        _check_year(out, root, specs, 2024)
        assert sorted(_repo(out).list_tags()) == ["2024-v1", "2024-v2"]
        assert _main_years(out) == {"2024": "2024-v2"}
        left = [b for b in _repo(out).list_branches() if b.startswith(WORK_PREFIX)]
        assert not left, (left, [e for _, _, e in results])
    print("same-unit outcomes (exit codes):", outcomes)


def test_publishing_on_a_moved_branch_is_a_conflict(
    tree: tuple[Path, list[TileSpec]], tmp_path: Path
) -> None:
    """Deterministic form of the race: a writer whose base moved publishes nothing.

    On a local file system two runs of one zone take turns (see
    ``indexer/locks.py``), so the processes above rarely race for real; this
    replays the losing writer's last step against Icechunk's conditional
    branch update, which is what protects S3 repositories.
    """
    from tessera_vz.indexer.roots import source_root
    from tessera_vz.indexer.run import IndexOptions, run_index
    from tessera_vz.indexer.transaction import UnitConflictError, write_unit
    from tessera_vz.indexer.unit import _existing_rows

    root, specs = tree
    out = tmp_path / "index"
    opts = IndexOptions(source=str(root), out=str(out), years=[2024])
    assert run_index(opts).exit_code == 0
    repo = _repo(out)
    stale = repo.lookup_branch("2024")
    stale_rows = _existing_rows(repo, stale)
    s = next(s for s in specs if s.year == 2024)
    t = (root / s.emb_path).stat().st_mtime + 100
    os.utime(root / s.emb_path, (t, t))
    assert run_index(opts).to_json()["indexed"] == 1  # the other run publishes v2
    repo = _repo(out)
    tip, tags = repo.lookup_branch("2024"), sorted(repo.list_tags())
    src = source_root(str(root))
    for expected in (stale, None):  # moved since read / created since read
        with pytest.raises(UnitConflictError, match="another index run published") as info:
            write_unit(repo, ZONE, 2024, [], [], stale_rows, src, 1 << 20, {},
                       expected_tip=expected)  # fmt: skip
        assert "Re-run the same command" in str(info.value)
        assert repo.lookup_branch("2024") == tip
        assert sorted(repo.list_tags()) == tags
        assert not any(b.startswith(WORK_PREFIX) for b in repo.list_branches())
    _check_year(out, root, specs, 2024)
