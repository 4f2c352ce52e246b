"""``catalog --items geoparquet``: the default mode's ``items.parquet`` in bulk, no Item files.

One small index (zone 31 in two years, and tiles on both sides of the
antimeridian, whose footprints are MultiPolygons with a ``west > east``
bbox) is catalogued in both modes; the bulk mode's ``items.parquet`` must
equal the default's row by row, open in pyarrow, DuckDB and geopandas and
give back Items that validate in pystac; its Collection opens and validates;
switching modes rebuilds every unit, and a misused option fails clearly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import duckdb
import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
from pystac.validation import JsonSchemaSTACValidator

from tessera_vz.catalog import CatalogOptions, build_catalog
from tessera_vz.catalog.tables import join_many
from tessera_vz.catalog.units import workers
from tessera_vz.cli import main as cli_main
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.urls import join
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.testing.tiles import make_tree
from tests.test_catalog import offline_stac  # noqa: F401  (a fixture)

AREAS = (
    ((0.7, 49.8, 0.9, 50.0), (2024, 2025)),  # zone 31
    ((179.8, 10.0, 180.0, 10.1), (2024,)),  # zone 60 at the antimeridian
    ((-180.0, -45.1, -179.9, -45.0), (2024,)),  # zone 1 at the antimeridian
)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bulk-tree")
    specs = [s for bbox, years in AREAS
             for s in make_tree(root, bbox=bbox, years=years, bands=4, manifest=False)]  # fmt: skip
    out = tmp_path_factory.mktemp("bulk-index")
    assert not run_index(IndexOptions(source=str(root), out=str(out))).failed
    return {"index": str(out), "tiles": len(specs)}


def _catalog(index: dict[str, Any], out: Path, items: str, jobs: int | None = 1) -> dict[str, Any]:
    report = build_catalog(
        CatalogOptions(store=index["index"], out=str(out), items=items, jobs=jobs)
    )
    assert report.exit_code == 0 and report.tiles == index["tiles"]
    return report.to_json()


@pytest.fixture(scope="module")
def both(index: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bulk-cat")
    _catalog(index, root / "json", "json", None)
    # Built on a pool of two processes (by default only from 16 zone-years up).
    assert _catalog(index, root / "geoparquet", "geoparquet", 2)["jobs"] == 2
    return {"json": root / "json", "geoparquet": root / "geoparquet"}


def test_items_parquet_equals_the_default_modes(both: dict[str, Path]) -> None:
    json_rows = pq.read_table(both["json"] / "stac" / "items.parquet")
    bulk_rows = pq.read_table(both["geoparquet"] / "stac" / "items.parquet")
    assert bulk_rows.schema == json_rows.schema
    assert bulk_rows.schema.metadata == json_rows.schema.metadata
    expected, got = json_rows.to_pylist(), bulk_rows.to_pylist()
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    for want, have in zip(expected, got, strict=True):
        assert have == want, want["id"]
    # The antimeridian's Items are there, with the STAC bbox crossing it (west > east).
    crossing = [r for r in got if r["bbox"]["xmin"] > r["bbox"]["xmax"]]
    assert crossing and {r["tessera:zone"] for r in crossing} <= {1, 60}
    # tiles.parquet does not depend on the mode.
    assert pq.read_table(both["geoparquet"] / "tiles.parquet").equals(
        pq.read_table(both["json"] / "tiles.parquet")
    )


def test_no_item_files_but_unit_catalogs(both: dict[str, Path], index: dict[str, Any]) -> None:
    stac_dir = both["geoparquet"] / "stac"
    assert not list(stac_dir.glob("utm*/*/grid_*.json"))
    assert len(list((both["json"] / "stac").glob("utm*/*/grid_*.json"))) == index["tiles"]
    units = sorted(stac_dir.glob("utm*/*/catalog.json"))
    assert len(units) == 4
    docs = [json.loads(p.read_text()) for p in units]
    assert sum(d["tessera:tiles"] for d in docs) == index["tiles"]
    for path, doc in zip(units, docs, strict=True):
        assert not [ln for ln in doc["links"] if ln["rel"] == "item"]
        (items,) = [ln for ln in doc["links"] if ln["rel"] == "items"]
        assert (path.parent / items["href"]).resolve() == (stac_dir / "items.parquet").resolve()


def test_bulk_items_open_everywhere(
    both: dict[str, Path],
    index: dict[str, Any],
    offline_stac: JsonSchemaSTACValidator,  # noqa: F811
) -> None:
    from stac_geoparquet.arrow import stac_table_to_items

    path = both["geoparquet"] / "stac" / "items.parquet"
    table = pq.read_table(path)
    assert table.num_rows == index["tiles"]
    assert json.loads(table.schema.metadata[b"geo"])["version"] == "1.1.0"
    frame = gpd.read_parquet(path)
    assert len(frame) == index["tiles"] and frame.geometry.is_valid.all()
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{path}') "
        'WHERE "tessera:zone" = 31 AND "proj:code" = \'EPSG:32631\''
    ).fetchone()
    assert rows is not None and rows[0] == rows[1] > 0
    items = list(stac_table_to_items(table))
    for item in items:
        pystac.validation.validate_dict(item)
    coll = pystac.Collection.from_file(str(both["geoparquet"] / "stac" / "collection.json"))
    coll.validate_all()
    assert coll.assets["items"].get_absolute_href() == str(path.resolve())
    assert coll.summaries.to_dict()["tessera:zone"] == [1, 31, 60]
    assert [c.id for c in coll.get_children()] == [
        "utm01-2024", "utm31-2024", "utm31-2025", "utm60-2024",
    ]  # fmt: skip
    assert not list(coll.get_items(recursive=True))


def test_switching_modes_rebuilds_every_unit(index: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "catalog"
    _catalog(index, out, "json")
    assert list((out / "stac").glob("utm*/*/grid_*.json"))
    bulk = _catalog(index, out, "geoparquet")
    assert len(bulk["units"]["built"]) == 4 and bulk["items_deleted"] == index["tiles"]
    assert not list((out / "stac").glob("utm*/*/grid_*.json"))
    assert _catalog(index, out, "geoparquet")["written"] == []  # up to date: nothing written
    back = _catalog(index, out, "json")
    assert len(back["units"]["built"]) == 4
    assert len(list((out / "stac").glob("utm*/*/grid_*.json"))) == index["tiles"]


def test_misused_option_fails_clearly(
    index: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigurationError, match="items must be one of json, geoparquet"):
        build_catalog(CatalogOptions(store=index["index"], out=str(tmp_path / "c"), items="xml"))
    args = ["catalog", index["index"], "--out", str(tmp_path / "c"), "--items", "xml"]
    assert cli_main(args) == 2
    assert "--items: invalid choice: 'xml' (choose from 'json', 'geoparquet')" in " ".join(
        capsys.readouterr().err.split()
    )
    assert cli_main([*args[:-1], "geoparquet", "--jobs", "0"]) == 2
    assert "--jobs must be 1 or more processes, got 0" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_urls_joined_in_bulk_as_one_by_one() -> None:
    roots = ["https://e.org/", "s3://b/x", "https://e.org/a%20b//", "file:///tmp/x"]
    rels = ["2024/grid_0.85_49.95/grid_0.85_49.95.npy", "a b/c#d.npy", ".hidden/x", "x/..y/z",
            "x~y-z_1.npy", "ü/x", "x.", "a/.b.", "...", "..a/b"]  # fmt: skip
    pairs = [(roots[i % 4], p) for i, p in enumerate(rels)]
    got = join_many(np.array([r for r, _ in pairs]), np.array([p for _, p in pairs]))
    assert got.to_pylist() == [join(r, p) for r, p in pairs]
    for bad in ("a/./b", "a/../b", "..", "x//y", "/abs", "a/"):  # refused as join refuses them
        with pytest.raises(ValueError, match="not a plain relative path"):
            join_many(np.array(roots[:2]), np.array(["ok.npy", bad]))


def test_pool_only_where_it_pays() -> None:
    cores = os.cpu_count() or 1
    assert workers("geoparquet", 60) == min(cores, 60)
    assert workers("geoparquet", 15) == 1  # small catalogs: spawning costs more than it saves
    assert workers("json", 60) == 1  # per-file writing, not CPU, in the default mode
    assert workers("json", 60, jobs=8) == 8 and workers("geoparquet", 3, jobs=8) == 3


def test_pool_takes_over_only_when_the_rest_is_long(
    index: dict[str, Any], both: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessera_vz.catalog import units

    monkeypatch.setattr(units, "MIN_UNITS_FOR_POOL", 1)
    # Units this small finish long before the rest would take 20 s: no pool is spawned.
    assert _catalog(index, tmp_path / "serial", "geoparquet", None)["jobs"] == 1
    if (os.cpu_count() or 1) < 2:
        return
    # Told that any rest is long, the pool takes over after the second unit; same rows.
    monkeypatch.setattr(units, "POOL_AFTER_S", 0.0)
    assert _catalog(index, tmp_path / "pooled", "geoparquet", None)["jobs"] >= 2
    want = pq.read_table(both["json"] / "stac" / "items.parquet")
    for run in ("serial", "pooled"):
        assert pq.read_table(tmp_path / run / "stac" / "items.parquet").equals(want), run


def test_item_files_equal_the_bulk_rows(both: dict[str, Path], index: dict[str, Any]) -> None:
    """Each default-mode Item file, as stac-geoparquet reads it, is the bulk mode's row."""
    from tessera_vz.catalog import stac

    files = sorted((both["json"] / "stac").glob("utm*/*/grid_*.json"))
    items = [json.loads(p.read_text()) for p in files]
    assert len(items) == index["tiles"]
    for it in items:  # relative to the Item's folder (stac/utmZZ/YEAR/), not to stac/
        href = it["assets"]["index"]["href"]
        assert href.startswith("../../../")
        it["assets"]["index"]["href"] = href[len("../../") :]
    schema = stac.items_schema()
    from_files = stac.items_table(items).select(schema.names).cast(schema)
    bulk = pq.read_table(both["geoparquet"] / "stac" / "items.parquet")
    want = {r["id"]: r for r in from_files.to_pylist()}
    got = bulk.to_pylist()
    assert sorted(want) == sorted(r["id"] for r in got)
    for row in got:
        assert row == want[row["id"]], row["id"]
