"""`tessera-vz catalog`: what it writes, read back by the tools users read it with.

An index of tiles in several zones, both hemispheres, at 70 N and on both
sides of the antimeridian is catalogued once; then ``tiles.parquet`` is read
with geopandas and DuckDB (with and without DuckDB's spatial extension, both
offline), the STAC collection is validated with pystac (core schemas shipped
in pystac, the projection extension's rules in ``tests/schemas``; any schema
fetch over the network fails the test), a tile is opened from nothing but
its Item, ``items.parquet`` gives back the Items, and ``coverage.png`` shows
each tile where it is. The README's DuckDB and pystac examples run as
written on the catalog.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import duckdb
import geopandas as gpd
import icechunk as ic
import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import shapely
import xarray as xr
from pystac.validation import JsonSchemaSTACValidator, set_validator

from tessera_vz.catalog import CatalogOptions, build_catalog
from tessera_vz.catalog.coverage import BACKGROUND, PANELS_KEY, TILE_COLOUR
from tessera_vz.catalog.stac import PROJECTION_EXTENSION
from tessera_vz.cli import main as cli_main
from tessera_vz.core.geometry import tile_grids
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.tiles import TileSpec, make_tree
from tests.crs84 import is_crs84

HERE = Path(__file__).parent
NORTH = (0.7, 49.8, 1.0, 50.0)  # zone 31 north, 2024 and 2025
OTHERS = (
    (5.8, -0.1, 6.2, 0.1),  # zones 31/32 across the equator
    (2.0, 70.0, 2.2, 70.1),  # high latitude
    (179.8, 10.0, 180.0, 10.1),  # zone 60 at the antimeridian
    (-180.0, -45.1, -179.9, -45.0),  # zone 1 at the antimeridian, south
)
POLYGON = "POLYGON((0.80 49.88, 0.90 49.88, 0.90 49.95, 0.80 49.95, 0.80 49.88))"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cat-tree")
    specs = make_tree(root, bbox=NORTH, years=(2024, 2025), bands=4, manifest=False)
    for bbox in OTHERS:
        specs += make_tree(root, bbox=bbox, years=(2024,), bands=4, manifest=False)
    out = tmp_path_factory.mktemp("cat-index")
    report = run_index(IndexOptions(source=str(root), out=str(out)))
    assert not report.failed and report.indexed == len(specs)
    return {"root": root, "index": out, "specs": specs}


@pytest.fixture(scope="module")
def catalog(indexed: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cat") / "catalog"
    report = build_catalog(CatalogOptions(store=str(indexed["index"]), out=str(out)))
    assert report.exit_code == 0 and report.failed == []
    assert report.tiles == len(indexed["specs"])
    return out


@pytest.fixture
def offline_stac(monkeypatch: pytest.MonkeyPatch) -> Iterator[JsonSchemaSTACValidator]:
    """pystac validation with local schemas only: any schema fetched over the network fails."""

    real = pystac.stac_io.DefaultStacIO.read_text_from_href

    def no_network(self: Any, href: str) -> str:
        if urlsplit(href).scheme in ("http", "https"):
            raise AssertionError(f"pystac tried to fetch {href} over the network")
        return real(self, href)

    monkeypatch.setattr(pystac.stac_io.DefaultStacIO, "read_text_from_href", no_network)
    validator = JsonSchemaSTACValidator()
    schema = json.loads((HERE / "schemas" / "projection-v2.0.0.json").read_text())
    validator.schema_cache[PROJECTION_EXTENSION] = schema
    set_validator(validator)
    yield validator
    set_validator(JsonSchemaSTACValidator())


def _by_name(specs: list[TileSpec]) -> dict[tuple[int, str], TileSpec]:
    return {(s.year, s.name): s for s in specs}


def _path_of(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))


def test_tiles_parquet_reads_back_with_geopandas(indexed: dict[str, Any], catalog: Path) -> None:
    gdf = gpd.read_parquet(catalog / "tiles.parquet")
    specs = _by_name(indexed["specs"])
    assert len(gdf) == len(specs)
    assert is_crs84(gdf.crs)
    geo = json.loads(pq.read_schema(catalog / "tiles.parquet").metadata[b"geo"])
    assert geo["version"] == "1.1.0"
    col = geo["columns"]["geometry"]
    assert col["encoding"] == "WKB" and col["geometry_types"] == ["MultiPolygon", "Polygon"]
    assert col["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    assert col["bbox"][0] == -180.0 and col["bbox"][2] == 180.0

    store = open_store(str(indexed["index"]))
    grids = tile_grids(gdf["lon"].to_numpy(), gdf["lat"].to_numpy())
    for i, row in enumerate(gdf.itertuples()):
        spec = specs[(row.year, row.tile)]
        # Every footprint holds its tile's centre.
        assert row.geometry.contains(shapely.Point(spec.lon, spec.lat)), row.tile
        assert (row.zone, row.epsg) == (grids.zone[i], grids.epsg[i])
        assert (row.height, row.width, row.bands) == (spec.height, spec.width, spec.bands)
        assert (row.utm_left, row.utm_top) == (grids.left[i], grids.top[i])
        assert row.utm_right - row.utm_left == 10 * spec.width
        assert _path_of(row.emb_url) == indexed["root"] / spec.emb_path
        assert _path_of(row.scales_url) == indexed["root"] / spec.scales_path
        assert row.emb_size == (indexed["root"] / spec.emb_path).stat().st_size
        repo = store.repo(row.zone)
        assert row.snapshot == repo.lookup_branch(str(row.year))
        assert row.tag == f"{row.year}-v1" and repo.lookup_tag(row.tag) == row.snapshot
        # Relative to the catalog: it can be published beside its index.
        repo_dir = indexed["index"].resolve() / f"utm{row.zone:02d}.icechunk"
        assert not os.path.isabs(row.repo) and (catalog / row.repo).resolve() == repo_dir
    # Exterior rings counter-clockwise, as the metadata says.
    assert all(p.exterior.is_ccw for g in gdf.geometry for p in shapely.get_parts(g))
    split = gdf[gdf.geometry.geom_type == "MultiPolygon"]
    assert sorted(split["zone"].unique().tolist()) == [1, 60]


def test_duckdb_reads_geometry_without_extensions(catalog: Path) -> None:
    """A fresh DuckDB (>= 1.5) decodes GeoParquet footprints with no extension loaded."""
    con = duckdb.connect()
    path = catalog / "tiles.parquet"
    types = {
        name: kind for name, kind, *_ in con.sql(f"DESCRIBE SELECT * FROM '{path}'").fetchall()
    }
    assert types["geometry"].startswith("GEOMETRY")
    gdf = gpd.read_parquet(path)
    want = sorted(
        gdf[(gdf.year == 2024) & gdf.intersects(shapely.box(0.80, 49.88, 0.90, 49.95))].tile
    )
    got = con.sql(
        f"SELECT tile FROM '{path}' WHERE year = 2024 AND bbox.xmin <= 0.90 AND bbox.xmax >= 0.80 "
        "AND bbox.ymin <= 49.95 AND bbox.ymax >= 49.88 ORDER BY tile"
    ).fetchall()
    assert [t for (t,) in got] == want and want
    wkt = con.sql(
        f"SELECT ST_AsText(geometry) FROM '{path}' WHERE tile = '{want[0]}' AND year = 2024"
    )
    footprint = gdf[(gdf.tile == want[0]) & (gdf.year == 2024)].geometry.iloc[0]
    assert shapely.from_wkt(wkt.fetchone()[0]).equals(footprint)


def test_duckdb_spatial_extension_from_its_wheel(catalog: Path, tmp_path: Path) -> None:
    from duckdb_extensions import import_extension

    con = duckdb.connect()
    con.sql(f"SET extension_directory = '{tmp_path / 'ext'}'")
    import_extension("spatial", con=con)
    con.load_extension("spatial")
    path = catalog / "tiles.parquet"
    gdf = gpd.read_parquet(path)
    poly = shapely.from_wkt(POLYGON)
    want = sorted(gdf[(gdf.year == 2024) & gdf.intersects(poly)].tile)
    got = con.sql(
        f"SELECT tile FROM '{path}' WHERE year = 2024 AND "
        f"ST_Intersects(geometry, ST_GeomFromText('{POLYGON}')) ORDER BY tile"
    ).fetchall()
    assert [t for (t,) in got] == want and want
    # DuckDB agrees that every footprint holds its centre.
    (inside,) = con.sql(
        f"SELECT count(*) FROM '{path}' WHERE ST_Contains(geometry, ST_Point(lon, lat))"
    ).fetchone()
    assert inside == len(gdf)


def _readme_block(marker: str) -> str:
    text = (HERE.parent / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README has no python block after <!-- {marker} -->"
    return m.group(1)


def test_readme_examples_run_on_a_fresh_machine(catalog: Path, tmp_path: Path) -> None:
    """The README's DuckDB and pystac blocks, as written, in a new process with an empty home."""
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    code = _readme_block("catalog-duckdb-example")
    # Run beside the catalog (its links to the index are relative, so no symlink to it).
    done = subprocess.run([sys.executable, "-c", code], cwd=catalog.parent, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    gdf = gpd.read_parquet(catalog / "tiles.parquet")
    want = sorted(gdf[(gdf.year == 2024) & gdf.intersects(shapely.from_wkt(POLYGON))].tile)
    # DuckDB draws a progress bar on stdout when a query passes 2 s (a busy machine): skip it.
    printed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("grid_")]
    assert printed == want, done.stdout[:400]

    code = _readme_block("catalog-pystac-example")
    done = subprocess.run([sys.executable, "-c", code], cwd=catalog.parent, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "EPSG:326" in done.stdout or "EPSG:327" in done.stdout
    assert "'y':" in done.stdout and "'band': 4" in done.stdout


def test_stac_validates_offline_and_matches_the_rows(
    indexed: dict[str, Any], catalog: Path, offline_stac: JsonSchemaSTACValidator
) -> None:
    coll = pystac.Collection.from_file(str(catalog / "stac" / "collection.json"))
    coll.validate_all()
    items = list(coll.get_items(recursive=True))
    rows = gpd.read_parquet(catalog / "tiles.parquet").set_index(["year", "tile"])
    assert len(items) == len(rows) == len(indexed["specs"])
    assert coll.summaries.to_dict()["tessera:year"] == [2024, 2025]
    assert coll.summaries.to_dict()["tessera:zone"] == [1, 31, 32, 60]
    assert coll.extent.temporal.intervals[0][0].year == 2024
    for item in items:
        item.validate()
        p = item.properties
        row = rows.loc[(p["tessera:year"], p["tessera:tile"])]
        assert item.collection_id == coll.id
        assert p["proj:code"] == f"EPSG:{row.epsg}"
        assert p["proj:shape"] == [row.height, row.width]
        assert p["proj:transform"] == [10.0, 0.0, row.utm_left, 0.0, -10.0, row.utm_top]
        assert p["start_datetime"] == f"{p['tessera:year']}-01-01T00:00:00Z"
        assert item.assets["embeddings"].href == row.emb_url
        assert item.assets["scales"].href == row.scales_url
        assert item.assets["index"].extra_fields["icechunk:snapshot_id"] == row.snapshot
        assert shapely.geometry.shape(item.geometry).equals(row.geometry)


def test_a_tile_opens_from_its_item_alone(indexed: dict[str, Any], catalog: Path) -> None:
    """The index asset says everything a client needs: repository, snapshot, group, containers."""
    coll = pystac.Collection.from_file(str(catalog / "stac" / "collection.json"))
    items = sorted(coll.get_items(recursive=True), key=lambda it: it.id)
    for item in items[:: max(1, len(items) // 4)]:
        index = item.assets["index"]
        # Relative to the Item: no local path of the machine that built the catalog.
        assert index.href.startswith("../../../") and not os.path.isabs(index.href)
        f = index.extra_fields
        repo = ic.Repository.open(
            ic.local_filesystem_storage(index.get_absolute_href()),
            authorize_virtual_chunk_access={
                c: ic.credentials.LocalFileSystemAccess
                for c in f["icechunk:virtual_chunk_containers"]
            },
        )
        ds = xr.open_zarr(repo.readonly_session(snapshot_id=f["icechunk:snapshot_id"]).store,
                          group=f["icechunk:group"], consolidated=False, zarr_format=3)  # fmt: skip
        expected = np.load(_path_of(item.assets["embeddings"].href))
        np.testing.assert_array_equal(ds["embeddings"].values, expected)
        assert list(ds["embeddings"].shape[:2]) == item.properties["proj:shape"]


def test_broken_items_fail_validation(catalog: Path, offline_stac: JsonSchemaSTACValidator) -> None:
    """Validation really runs: each way of breaking a good Item is caught."""
    path = next((catalog / "stac" / "utm31" / "2024").glob("grid_*.json"))
    good = json.loads(path.read_text())
    pystac.validation.validate_dict(good)  # the control passes
    breakages = {
        "shape of floats": lambda d: d["properties"].__setitem__("proj:shape", [1.5, 2]),
        "transform of 5": lambda d: d["properties"].__setitem__("proj:transform", [1, 2, 3, 4, 5]),
        "code not a code": lambda d: d["properties"].__setitem__("proj:code", "32631"),
        "unknown proj field": lambda d: d["properties"].__setitem__("proj:epsg", 32631),
        "no datetime": lambda d: d["properties"].pop("start_datetime"),
        "bbox of 2": lambda d: d.__setitem__("bbox", [0.0, 1.0]),
        "geometry not GeoJSON": lambda d: d.__setitem__("geometry", {"type": "Polygon"}),
        "asset without href": lambda d: d["assets"]["embeddings"].pop("href"),
    }
    for what, breaks in breakages.items():
        bad = copy.deepcopy(good)
        breaks(bad)
        with pytest.raises(pystac.errors.STACValidationError):
            pystac.validation.validate_dict(bad)
            pytest.fail(f"an item with {what} passed validation")


def test_items_parquet_gives_back_the_items(
    catalog: Path, offline_stac: JsonSchemaSTACValidator
) -> None:
    from stac_geoparquet.arrow import stac_table_to_items

    table = pq.read_table(catalog / "stac" / "items.parquet")
    meta = json.loads(table.schema.metadata[b"geo"])
    assert meta["version"] == "1.1.0"
    items = {it["id"]: it for it in stac_table_to_items(table)}
    files = [json.loads(p.read_text()) for p in (catalog / "stac").glob("utm*/*/grid_*.json")]
    on_disk = {d["id"]: d for d in files}
    assert items.keys() == on_disk.keys()
    for key, it in items.items():
        d = on_disk[key]
        pystac.validation.validate_dict(it)
        assert _props(it) == _props(d)
        # Each relative to where it is read from: the Item's folder, or items.parquet's (stac/).
        folder = (
            catalog
            / "stac"
            / f"utm{d['properties']['tessera:zone']:02d}"
            / str(d["properties"]["tessera:year"])
        )
        from_parquet = (catalog / "stac" / it["assets"]["index"]["href"]).resolve()
        assert from_parquet == (folder / d["assets"]["index"]["href"]).resolve()
        assert (from_parquet / "repo").is_file()  # an Icechunk repository
        assert shapely.geometry.shape(it["geometry"]).equals(shapely.geometry.shape(d["geometry"]))
    assert len(gpd.read_parquet(catalog / "stac" / "items.parquet")) == len(items)


def _props(item: dict[str, Any]) -> dict[str, Any]:
    """Properties with datetimes parsed (stac-geoparquet writes them with microseconds)."""
    return {
        k: pystac.utils.str_to_datetime(v) if k.endswith("datetime") and v else v
        for k, v in item["properties"].items()
    }


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])


def test_coverage_png_draws_each_tile_where_it_is(indexed: dict[str, Any], catalog: Path) -> None:
    from PIL import Image

    data = (catalog / "coverage.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(catalog / "coverage.png")
    img.load()
    panels = json.loads(img.info[PANELS_KEY])["panels"]
    pixels = np.asarray(img.convert("RGB")).astype(int)
    assert [p["year"] for p in panels] == [2024, 2025]

    def colour_at(panel: dict[str, Any], lon: float, lat: float) -> np.ndarray:
        w, s, e, n = panel["extent"]
        x0, y0, x1, y1 = panel["pixels"]
        x = x0 + (lon - w) / (e - w) * (x1 - x0)
        y = y0 + (n - lat) / (n - s) * (y1 - y0)
        return pixels[int(y), int(x)]

    tile, background = _rgb(TILE_COLOUR), _rgb(BACKGROUND)
    assert np.abs(tile - background).max() > 150

    def is_tile(c: np.ndarray) -> bool:  # edges are antialiased: nearer one colour than the other
        return bool(np.abs(c - tile).sum() < np.abs(c - background).sum())

    for panel in panels:
        year_specs = [s for s in indexed["specs"] if s.year == panel["year"]]
        for spec in year_specs:
            assert is_tile(colour_at(panel, spec.lon, spec.lat)), spec
        # Tiles indexed for 2024 only are not drawn on the 2025 map.
        if panel["year"] == 2025:
            assert not is_tile(colour_at(panel, 179.95, 10.05))
            assert not is_tile(colour_at(panel, -179.95, -45.05))
        assert not is_tile(colour_at(panel, -90.0, 40.0))


def test_cli_catalog(
    indexed: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "catalog"
    args = ["catalog", str(indexed["index"]), "--out", str(out), "--json", "--allow-local-sources"]
    assert cli_main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["tiles"] == len(indexed["specs"]) and doc["failed"] == []
    assert {(u["zone"], u["year"]) for u in doc["units"]["built"]} == {
        (31, 2024),
        (31, 2025),
        (32, 2024),
        (60, 2024),
        (1, 2024),
    }
    assert cli_main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["written"] == [] and again["units"]["built"] == []
    # Usage errors: exit 2 with one line saying what to do, nothing written.
    assert cli_main(["catalog", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c2")]) == 2
    assert "is not a directory" in " ".join(capsys.readouterr().err.split())
    (tmp_path / "file").write_text("x")
    assert cli_main(["catalog", str(indexed["index"]), "--out", str(tmp_path / "file")]) == 2
    assert "is not a directory" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "c2").exists()
