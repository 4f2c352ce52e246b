"""Incremental catalog runs, keyed by snapshot ids.

A re-run over an unchanged index writes nothing (every file's mtime stays);
a change to one (zone, year) rewrites only that unit's rows and Items, the
others' row groups are copied and their Item files left alone; a vanished
unit is removed; a unit that cannot be read is reported (exit 1) and keeps
what the catalog had; two runs never write one catalog at once; the index
may live on S3.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import geopandas as gpd
import icechunk as ic
import pyarrow.parquet as pq
import pytest
import zarr

from tessera_vz.catalog import CatalogOptions, CatalogReport, build_catalog
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.layout import repo_name
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.testing.tiles import make_tree

NORTH = (0.7, 49.8, 0.9, 50.0)  # 2 x 2 cells in zone 31
EAST = (6.0, 49.8, 6.2, 49.9)  # 2 cells in zone 32


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def _run(index: Path, out: Path) -> CatalogReport:
    return build_catalog(CatalogOptions(store=str(index), out=str(out)))


def _units(report: CatalogReport, kind: str) -> set[tuple[int, int]]:
    return {(u["zone"], u["year"]) for u in report.to_json()["units"][kind]}


@pytest.fixture
def index(tmp_path: Path) -> dict[str, Any]:
    root = tmp_path / "tree"
    specs = make_tree(root, bbox=NORTH, years=(2024, 2025), bands=4, manifest=False)
    specs += make_tree(root, bbox=EAST, years=(2024,), bands=4, manifest=False)
    out = tmp_path / "index"
    assert not run_index(IndexOptions(source=str(root), out=str(out))).failed
    return {"root": root, "index": out, "specs": specs, "catalog": tmp_path / "catalog"}


def test_unchanged_index_rewrites_nothing(index: dict[str, Any]) -> None:
    first = _run(index["index"], index["catalog"])
    assert _units(first, "built") == {(31, 2024), (31, 2025), (32, 2024)}
    assert first.rows_built == len(index["specs"]) and first.rows_copied == 0
    before = _mtimes(index["catalog"])
    assert "catalog-state.json" in before and "tiles.parquet" in before

    again = _run(index["index"], index["catalog"])
    assert again.written == [] and again.rows_built == 0 and again.items_written == 0
    assert _units(again, "kept") == {(31, 2024), (31, 2025), (32, 2024)}
    assert again.tiles == len(index["specs"]) and again.exit_code == 0
    assert _mtimes(index["catalog"]) == before


def test_one_changed_unit_rewrites_only_its_rows_and_items(index: dict[str, Any]) -> None:
    cat = index["catalog"]
    _run(index["index"], cat)
    before = _mtimes(cat)
    # A new tile in zone 31, 2025 only: one commit to one branch.
    make_tree(index["root"], centres=[(0.65, 49.85)], years=(2025,), bands=4, manifest=False)
    report = run_index(IndexOptions(source=str(index["root"]), out=str(index["index"])))
    assert [(c.zone, c.year) for c in report.commits] == [(31, 2025)]

    run = _run(index["index"], cat)
    assert _units(run, "built") == {(31, 2025)}
    assert _units(run, "kept") == {(31, 2024), (32, 2024)}
    n2025 = sum(1 for s in index["specs"] if s.year == 2025) + 1
    assert run.rows_built == n2025 and run.items_written == n2025
    assert run.rows_copied == len(index["specs"]) + 1 - n2025
    after = _mtimes(cat)
    for name, mtime in before.items():
        if name.startswith(("stac/utm31/2024/", "stac/utm32/")):
            assert after[name] == mtime, f"{name} was rewritten"
        if name.startswith("stac/utm31/2025/"):
            assert after[name] != mtime, f"{name} was not rewritten"
    assert "stac/utm31/2025/grid_0.65_49.85.json" in after

    rows = gpd.read_parquet(cat / "tiles.parquet")
    assert len(rows) == len(index["specs"]) + 1
    repo = ic.Repository.open(ic.local_filesystem_storage(str(index["index"] / repo_name(31))))
    for (zone, year), snaps in rows.groupby(["zone", "year"])["snapshot"]:
        want = ic.Repository.open(
            ic.local_filesystem_storage(str(index["index"] / repo_name(int(zone))))
        ).lookup_branch(str(year))
        assert set(snaps) == {want}
    assert set(rows[(rows.zone == 31) & (rows.year == 2025)].tag) == {"2025-v2"}
    assert repo.lookup_tag("2025-v2") == repo.lookup_branch("2025")
    items = pq.read_table(cat / "stac" / "items.parquet", columns=["id", "tessera:snapshot"])
    assert "grid_0.65_49.85-2025" in items["id"].to_pylist() and items.num_rows == len(rows)
    state = json.loads((cat / "catalog-state.json").read_text())
    assert state["units"]["31/2025"]["snapshot"] == repo.lookup_branch("2025")
    assert state["units"]["31/2025"]["tiles"] == n2025
    coll = json.loads((cat / "stac" / "collection.json").read_text())
    assert {(u["zone"], u["year"], u["snapshot"]) for u in coll["tessera:units"]} == {
        (int(k.split("/")[0]), int(k.split("/")[1]), u["snapshot"])
        for k, u in state["units"].items()
    }


def test_vanished_unit_is_removed(index: dict[str, Any]) -> None:
    cat = index["catalog"]
    _run(index["index"], cat)
    repo = ic.Repository.open(ic.local_filesystem_storage(str(index["index"] / repo_name(32))))
    repo.delete_branch("2024")
    run = _run(index["index"], cat)
    assert _units(run, "removed") == {(32, 2024)} and run.built == []
    assert not (cat / "stac" / "utm32").exists()
    rows = pq.read_table(cat / "tiles.parquet", columns=["zone"])
    assert 32 not in set(rows["zone"].to_pylist())
    assert run.rows_copied == rows.num_rows
    items = pq.read_table(cat / "stac" / "items.parquet", columns=["tessera:zone"])
    assert 32 not in set(items["tessera:zone"].to_pylist())
    coll = json.loads((cat / "stac" / "collection.json").read_text())
    assert coll["summaries"]["tessera:zone"] == [31]


def test_unreadable_unit_is_reported_and_keeps_its_rows(index: dict[str, Any]) -> None:
    cat = index["catalog"]
    _run(index["index"], cat)
    old = gpd.read_parquet(cat / "tiles.parquet")
    repo = ic.Repository.open(
        ic.local_filesystem_storage(str(index["index"] / repo_name(31))),
    )
    # Break zone 31's 2024 branch: a commit that drops its tiles table.
    session = repo.writable_session("2024")
    del zarr.open_group(session.store, mode="r+")["tiles"]
    session.commit("drop the tiles table")
    # ... and change 2025 (a new tile), which must still be catalogued.
    make_tree(index["root"], centres=[(0.65, 49.85)], years=(2025,), bands=4, manifest=False)
    run_index(IndexOptions(source=str(index["root"]), out=str(index["index"]), years=[2025]))

    run = _run(index["index"], cat)
    assert run.exit_code == 1
    assert [(f["zone"], f["year"]) for f in run.failed] == [(31, 2024)]
    assert "tiles table" in run.failed[0]["reason"]
    assert _units(run, "built") == {(31, 2025)}
    rows = gpd.read_parquet(cat / "tiles.parquet")
    kept = rows[(rows.zone == 31) & (rows.year == 2024)]
    assert sorted(kept.tile) == sorted(old[(old.zone == 31) & (old.year == 2024)].tile)
    assert set(kept.snapshot) == set(old[(old.zone == 31) & (old.year == 2024)].snapshot)
    assert "grid_0.65_49.85" in set(rows[rows.year == 2025].tile)
    # Next run: the broken unit still fails, nothing else changed, so nothing is rewritten.
    before = _mtimes(cat)
    again = _run(index["index"], cat)
    assert again.exit_code == 1 and again.written == [] and _mtimes(cat) == before
    assert again.tiles == len(rows)


def test_deleted_outputs_are_rebuilt(index: dict[str, Any]) -> None:
    cat = index["catalog"]
    _run(index["index"], cat)
    (cat / "tiles.parquet").unlink()
    (cat / "stac" / "utm31" / "2025" / "catalog.json").unlink()
    run = _run(index["index"], cat)
    assert _units(run, "built") == {(31, 2024), (31, 2025), (32, 2024)}
    assert len(pq.read_table(cat / "tiles.parquet")) == len(index["specs"])
    assert (cat / "stac" / "utm31" / "2025" / "catalog.json").exists()
    assert _run(index["index"], cat).written == []


def test_concurrent_run_is_refused(index: dict[str, Any]) -> None:
    cat = index["catalog"]
    cat.mkdir()
    fd = os.open(cat / ".catalog.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ConfigurationError, match="another `tessera-vz catalog` run"):
            _run(index["index"], cat)
    finally:
        os.close(fd)
    assert not (cat / "tiles.parquet").exists()


def test_catalog_of_an_index_on_s3(tmp_path: Path, s3_env: Any) -> None:
    root = tmp_path / "tree"
    specs = make_tree(root, bbox=NORTH, years=(2024,), bands=4, manifest=False)
    s3_env.upload_tree(root, "cat-tiles", "tessera")
    s3_env.create_bucket("cat-index")
    out = "s3://cat-index/idx"
    assert not run_index(IndexOptions(source="s3://cat-tiles/tessera", out=out)).failed
    cat = tmp_path / "catalog"
    run = build_catalog(CatalogOptions(store=out, out=str(cat)))
    assert run.exit_code == 0 and run.tiles == len(specs)
    rows = gpd.read_parquet(cat / "tiles.parquet")
    assert set(rows.repo) == {f"{out}/{repo_name(31)}"}
    assert all(u.startswith("s3://cat-tiles/tessera/2024/") for u in rows.emb_url)
    item = json.loads(next((cat / "stac" / "utm31" / "2024").glob("grid_*.json")).read_text())
    assert item["assets"]["index"]["icechunk:virtual_chunk_containers"] == [
        "s3://cat-tiles/tessera/"
    ]
    assert build_catalog(CatalogOptions(store=out, out=str(cat))).written == []
