"""Distributed indexing: (zone, year) units on a Dask LocalCluster of processes.

The result must be the single-process run's result: same report, same
tiles, same branches and tags, values equal to ``np.load``. Two units of one
zone write the same local repository from different worker processes, which
icechunk's local storage does not make safe by itself (it lost branches and
tags when tried), so the zone write lock is tested directly as well.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import icechunk as ic
import numpy as np
import pytest

from tessera_vz.cli import main as cli_main
from tessera_vz.core.layout import repo_name
from tessera_vz.indexer import inventory
from tessera_vz.indexer.listing import from_listing
from tessera_vz.indexer.roots import object_store, source_root
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.indexer.unit import run_unit
from tessera_vz.reader import open_store
from tessera_vz.testing.tiles import TileSpec, make_tree

YEARS = (2023, 2024)
BBOX = (5.8, 49.8, 6.2, 50.0)  # 4 x 2 cells astride the zone 31/32 boundary at 6 degrees E


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[TileSpec]]:
    root = tmp_path_factory.mktemp("dtree")
    specs = make_tree(root, bbox=BBOX, years=YEARS, bands=4, manifest=False)
    assert {(s.year, int(s.epsg) % 100) for s in specs} == {(y, z) for y in YEARS for z in (31, 32)}
    return root, specs


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """A report without timings (which differ between any two runs)."""
    return {k: v for k, v in report.items() if k != "timings"} | {
        "commits": [(c["zone"], c["year"], c["tag"]) for c in report["commits"]]
    }


def _repo_state(out: Path, zone: int) -> tuple[list[str], list[str], dict[str, Any]]:
    repo = ic.Repository.open(ic.local_filesystem_storage(str(out / repo_name(zone))))
    main = repo.readonly_session(branch="main").store
    import zarr

    attrs = dict(zarr.open_group(main, mode="r", zarr_format=3).attrs)
    return sorted(repo.list_branches()), sorted(repo.list_tags()), attrs


def test_dask_local_cluster_equals_single_process(
    tree: tuple[Path, list[TileSpec]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, specs = tree
    single = tmp_path / "single"
    dist = tmp_path / "dist"
    ref = run_index(IndexOptions(source=str(root), out=str(single)))
    assert ref.indexed == len(specs) == 16 and ref.exit_code == 0

    code = cli_main(["index", str(root), "--out", str(dist), "--workers", "2", "--json"])
    printed = capsys.readouterr()
    assert code == ref.exit_code, printed.err
    report = json.loads(printed.out)
    assert _summary(report) == _summary(ref.to_json())

    for zone in (31, 32):
        branches, tags, attrs = _repo_state(dist, zone)
        assert branches == ["2023", "2024", "coverage", "main"]  # coverage: summary.py
        assert tags == ["2023-v1", "2024-v1"]
        assert attrs["tessera:years"] == {"2023": "2023-v1", "2024": "2024-v1"}
        assert _repo_state(single, zone)[2] == attrs

    a = open_store(str(single), allow_local_sources=True)
    b = open_store(str(dist), allow_local_sources=True)
    for year in YEARS:
        for zone in (31, 32):
            ta, tb = a.tiles(year, zone), b.tiles(year, zone)
            del ta.attrs["tessera:snapshots"], tb.attrs["tessera:snapshots"]  # two indexes' ids
            assert ta.identical(tb)
    for spec in specs:
        ds = b.open_tile(spec.lon, spec.lat, spec.year)
        np.testing.assert_array_equal(ds["embeddings"].values, np.load(root / spec.emb_path))
        np.testing.assert_array_equal(ds["scales"].values, np.load(root / spec.scales_path))

    # A re-run on an existing cluster (--scheduler) is incremental too.
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        again = run_index(
            IndexOptions(source=str(root), out=str(dist), scheduler=cluster.scheduler_address)
        )
    assert (again.indexed, again.unchanged, again.commits) == (0, len(specs), [])


def _unit(args: tuple[IndexOptions, int, int, list[inventory.TileSource], float]) -> list[str]:
    *unit, start = args
    time.sleep(max(0.0, start - time.time()))  # all processes write at once
    report = run_unit(*unit)
    return [c.tag for c in report.commits] + [f.reason for f in report.failed]


def test_concurrent_units_of_one_local_zone(tmp_path: Path) -> None:
    """Four processes publish four years of one zone at once; nothing is lost.

    Without the zone lock this lost branches and tags, or failed with
    conflicts, in every one of several tries (one commit per tile widens the
    window; the synchronised start makes the writes overlap).
    """
    years = (2020, 2021, 2022, 2023)
    root = tmp_path / "tree"
    make_tree(root, bbox=(0.6, 49.7, 0.8, 49.9), years=years, bands=4, manifest=False)
    opts = IndexOptions(source=str(root), out=str(tmp_path / "index"), batch_tiles=1)
    tiles, failures = from_listing(object_store(source_root(opts.source)))
    assert not failures
    start = time.time() + 6.0  # after the spawned processes have imported everything
    jobs = [(opts, 31, y, [t for t in tiles if t.year == y], start) for y in years]
    with mp.get_context("spawn").Pool(len(jobs)) as pool:
        results = pool.map(_unit, jobs)
    assert results == [[f"{y}-v1"] for y in years]
    repo = ic.Repository.open(ic.local_filesystem_storage(str(tmp_path / "index" / repo_name(31))))
    assert sorted(repo.list_branches()) == [*map(str, years), "main"]
    assert sorted(repo.list_tags()) == [f"{y}-v1" for y in years]


def test_without_distributed_single_process_still_works(
    tree: tuple[Path, list[TileSpec]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``distributed`` is imported only for --scheduler/--workers."""
    import sys

    root, specs = tree
    monkeypatch.setitem(sys.modules, "distributed", None)  # import now fails
    report = run_index(IndexOptions(source=str(root), out=str(tmp_path / "a"), years=[2024]))
    assert report.indexed == len(specs) // 2
    from tessera_vz.core.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="tessera-vz\\[dask\\]"):
        run_index(IndexOptions(source=str(root), out=str(tmp_path / "b"), workers=2))
