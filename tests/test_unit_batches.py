"""A unit written in several batches: one published snapshot per run, logs bounded by a batch.

A (zone, year) unit is written to a scratch branch in batches so that memory
stays bounded by a batch. Under the zone's lock (local repositories) each
batch is an ordinary commit and garbage collection folds the chain before
publishing; without it each batch amends the previous one, and every amend
rebuilds the transaction log of all the unit's changes so far: its size,
and the memory to build it, grow with the batches already written (at full
scale, ~3 GB for a 30,000-tile unit). These tests index real-size (sparse)
tiles and read the repository Icechunk wrote on disk.
"""

from __future__ import annotations

from pathlib import Path

import icechunk as ic
import pytest

from tessera_vz.core.layout import WORK_PREFIX, repo_name
from tessera_vz.indexer import unit
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.testing.tiles import make_tree, write_manifest

YEAR = 2024
ZONE = 31
BATCH = 8


def _centres(first: int, n: int) -> list[tuple[float, float]]:
    """Cell centres ``first`` .. ``first + n - 1`` of zone 31, row by row (60 cells a row)."""
    return [
        (round(0.05 + 0.1 * (i % 60), 2), round(40.05 + 0.1 * (i // 60), 2))
        for i in range(first, first + n)
    ]


def _repo(out: Path) -> ic.Repository:
    return ic.Repository.open(ic.local_filesystem_storage(str(out / repo_name(ZONE))))


def _reachable(repo: ic.Repository) -> set[str]:
    """Every snapshot in the history of a branch or tag."""
    tips = [repo.lookup_branch(b) for b in repo.list_branches()]
    tips += [repo.lookup_tag(t) for t in repo.list_tags()]
    return {s.id for tip in tips for s in repo.ancestry(snapshot_id=tip)}


def _log_sizes(out: Path) -> dict[str, int]:
    """Transaction log bytes by snapshot id, for the year's logs.

    The logs of ``main``'s description and of the coverage record are a few
    hundred bytes; a batch of 8 real-size tiles logs ~15 kB.
    """
    logs = (out / repo_name(ZONE) / "transactions").iterdir()
    return {f.name: f.stat().st_size for f in logs if f.stat().st_size > 1000}


def _index(src: Path, out: Path) -> dict[str, object]:
    report = run_index(IndexOptions(source=str(src), out=str(out), batch_tiles=BATCH))
    assert not report.failed, report.failed
    (commit,) = report.to_json()["commits"]
    return commit


def test_batches_publish_one_snapshot_per_run(tmp_path: Path) -> None:
    """Tags go from run to run, only reachable snapshots remain, and diffs are whole."""
    src, out = tmp_path / "tiles", tmp_path / "index"
    first = make_tree(src, centres=_centres(0, 3 * BATCH), years=(YEAR,), sparse=True)
    commit = _index(src, out)
    assert commit["batches"] == 3 and commit["amended"] is False
    repo = _repo(out)
    v1 = repo.lookup_tag(f"{YEAR}-v1")
    assert repo.lookup_branch(str(YEAR)) == v1 == commit["snapshot"]
    # The batches were folded: the year's snapshot sits on the repository's first.
    history = list(repo.ancestry(tag=f"{YEAR}-v1"))
    assert len(history) == 2 and history[1].parent_id is None
    # Each batch kept its own log (the history of the folded snapshot), no more.
    assert len(_log_sizes(out)) == 3

    # A second run adds 10 tiles (two batches of 8 and 2) to the same year.
    added = make_tree(
        src, centres=_centres(3 * BATCH, 10), years=(YEAR,), sparse=True, manifest=False
    )
    write_manifest(src, first + added)
    commit = _index(src, out)
    assert commit["batches"] == 2 and commit["tag"] == f"{YEAR}-v2"
    repo = _repo(out)
    v2 = repo.lookup_tag(f"{YEAR}-v2")
    assert repo.lookup_branch(str(YEAR)) == v2
    history = [s.id for s in repo.ancestry(branch=str(YEAR))]
    assert history[:2] == [v2, v1] and len(history) == 3  # v2, v1, the first snapshot
    assert sorted(repo.list_branches()) == sorted(["main", "coverage", str(YEAR)])
    assert not [b for b in repo.list_branches() if b.startswith(WORK_PREFIX)]
    on_disk = {f.name for f in (out / repo_name(ZONE) / "snapshots").iterdir()}
    assert on_disk == _reachable(repo)
    # The diff between the tags is whole although each batch logged only its part.
    diff = repo.diff(from_tag=f"{YEAR}-v1", to_tag=f"{YEAR}-v2")
    # (the tiles table is written anew by the last batch).
    names = {s.name for s in added} | {"tiles"}
    assert {g.strip("/") for g in diff.new_groups} == names
    assert {a.strip("/").split("/")[0] for a in diff.new_arrays} == names


@pytest.mark.parametrize("locked", [True, False])
def test_transaction_logs_do_not_grow_with_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, locked: bool
) -> None:
    """Folded batches log only themselves; amended ones log everything so far.

    The log a commit writes is built in memory whole (decoded, merged and
    encoded), so its size bounds the commit's memory: folded, the largest is
    about one batch's; amending (no lock), the last is the whole unit's.
    """
    if not locked:
        # As on S3: no lock, so the batches must amend each other.
        monkeypatch.setattr(unit, "lock_path", lambda out, zone: None)
    src, out = tmp_path / "tiles", tmp_path / "index"
    make_tree(src, centres=_centres(0, 4 * BATCH), years=(YEAR,), sparse=True)
    commit = _index(src, out)
    assert commit["batches"] == 4 and commit["amended"] is not locked
    sizes = sorted(_log_sizes(out).values())
    if locked:
        assert len(sizes) == 4
        # The last batch also logs the tiles table (at zstd level 3 up to ~1.5x
        # a batch's log); amending, the last log is ~4x the first.
        assert sizes[-1] < 2 * sizes[0], sizes
    else:
        # Replaced amends stay as garbage (S3 runs do not collect): 8, 16, 24, 32 tiles.
        assert len(sizes) == 4
        assert sizes[-1] > 3 * sizes[0], sizes
