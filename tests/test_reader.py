"""Reading pixels back: points, regions, zone views and time series, byte for byte.

Expected values are recomputed from the generator's content formula, so a
wrong offset, a wrong tile or a wrong owner of an overlapping pixel shows up
as a mismatch, not as plausible numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from tessera_vz.core.errors import TileNotFoundError
from tessera_vz.core.geometry import project, tile_grids, unproject
from tessera_vz.core.loop import sync
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.reader.pixels import Located
from tessera_vz.reader.points import read_located
from tessera_vz.reader.store import TesseraStore, dequantise
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import TileSpec, embedding_values, make_tree, scale_values

BANDS = 4
YEARS = (2024, 2025)


def expected_pixel(spec: TileSpec, row: int, col: int) -> np.ndarray:
    e = embedding_values(spec.year, spec.lon, spec.lat, row, col, np.arange(spec.bands))
    s = scale_values(spec.year, spec.lon, spec.lat, row, col)
    return dequantise(e[None], np.array([s]))[0]


def expected_at(
    specs: dict[tuple[int, str], TileSpec], year: int, lon: float, lat: float
) -> np.ndarray | None:
    """Value of the tile whose cell holds (lon, lat); None when it does not cover it."""
    name = f"grid_{(np.floor(lon * 10) + 0.5) / 10:.2f}_{(np.floor(lat * 10) + 0.5) / 10:.2f}"
    spec = specs.get((year, name))
    if spec is None:
        return None
    g = tile_grids(spec.lon, spec.lat)
    e, n = project(lon, lat, int(g.epsg[0]))
    r = int(np.floor((g.top[0] - float(n)) / 10))
    c = int(np.floor((float(e) - g.left[0]) / 10))
    if not (0 <= r < spec.height and 0 <= c < spec.width):
        return None
    return expected_pixel(spec, r, c)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiles in both hemispheres, across the zone 31/32 boundary and at 70 N."""
    root = tmp_path_factory.mktemp("world")
    specs: list[TileSpec] = []
    for bbox in ((0.7, 49.8, 1.0, 50.0), (5.8, -0.1, 6.2, 0.1), (2.0, 70.0, 2.3, 70.2)):
        specs += make_tree(root, bbox=bbox, years=YEARS, bands=BANDS, manifest=False)
    out = tmp_path_factory.mktemp("world-index")
    report = run_index(IndexOptions(source=str(root), out=str(out)))
    assert not report.failed
    return {"root": root, "out": out, "specs": {(s.year, s.name): s for s in specs}}


@pytest.fixture(scope="module")
def store(world: dict[str, Any]) -> TesseraStore:
    return open_store(str(world["out"]), allow_local_sources=True)


def test_points_match_source_in_any_order(world: dict[str, Any], store: TesseraStore) -> None:
    rng = np.random.default_rng(1)
    boxes = [(0.7, 49.8, 1.0, 50.0), (5.8, -0.1, 6.2, 0.1), (2.0, 70.0, 2.3, 70.2)]
    lons = np.concatenate([rng.uniform(b[0], b[2], 400) for b in boxes])
    lats = np.concatenate([rng.uniform(b[1], b[3], 400) for b in boxes])
    lons[:4] = [np.nan, 20.0, 0.8, 0.8]
    lats[:4] = [49.9, 20.0, np.nan, 95.0]
    values = store.points(lons, lats, 2024)
    assert values.shape == (lons.size, BANDS) and values.dtype == np.float32
    assert np.isnan(values[:4]).all()  # NaN coords, no tile, NaN lat, lat out of range
    for i in range(4, lons.size):
        exp = expected_at(world["specs"], 2024, lons[i], lats[i])
        assert exp is not None
        np.testing.assert_array_equal(values[i], exp)
    # The generator's invalid-scale patch (rows 0-1, cols 0-5: NaN, 0, <0, inf, 1, >1)
    # reads back as no data; it lies outside the cell, so read it by tile pixel.
    loc = store.locate(0.85, 49.95, 2024)
    patch = Located(
        ok=np.ones(6, bool), tile=np.full(6, loc.name, dtype=object), row=np.ones(6, np.int64),
        col=np.arange(6, dtype=np.int64), zone=np.full(6, loc.zone, np.int64),
        facts={k: np.asarray([v] * 6) for k, v in loc.facts.items()},
    )  # fmt: skip
    source, _ = store.zone_year(loc.zone, 2024)
    emb, scale, _ = sync(read_located({loc.zone: source}, patch, 2024))
    assert np.isnan(dequantise(emb, scale)).all()
    # Order does not matter: a shuffled call gives the same rows, shuffled.
    perm = rng.permutation(lons.size)
    np.testing.assert_array_equal(store.points(lons[perm], lats[perm], 2024), values[perm])


def test_time_series(world: dict[str, Any], store: TesseraStore) -> None:
    lons = np.array([0.81, 0.93, 6.05])
    lats = np.array([49.85, 49.97, -0.05])
    series = store.points(lons, lats, years=list(YEARS))
    assert series.shape == (2, 3, BANDS)
    for t, year in enumerate(YEARS):
        np.testing.assert_array_equal(series[t], store.points(lons, lats, year))
    assert not np.array_equal(series[0], series[1])  # the content encodes the year
    one = store.point(0.81, 49.85, years=list(YEARS))
    np.testing.assert_array_equal(one, series[:, 0])
    reg = store.region((0.8, 49.85, 0.82, 49.87), years=list(YEARS))
    assert reg.embeddings.dims == ("time", "y", "x", "band")
    assert reg.time.values.tolist() == list(YEARS)


def _check_region(world: dict[str, Any], ds: xr.Dataset, year: int, every: int = 3) -> int:
    """Compare sampled pixels with the owner tile's formula values (vectorised)."""
    epsg = int(ds.attrs["proj:code"].split(":")[1])
    yy, xx = np.meshgrid(ds.y.values[::every], ds.x.values[::every], indexing="ij")
    lon, lat = unproject(xx.ravel(), yy.ravel(), epsg)
    v = ds.embeddings.values[::every, ::every].reshape(-1, ds.sizes["band"])
    clon = (np.floor(lon * 10) + 0.5) / 10
    clat = (np.floor(lat * 10) + 0.5) / 10
    names = np.array([f"grid_{a:.2f}_{b:.2f}" for a, b in zip(clon, clat, strict=True)])
    checked = 0
    for name in np.unique(names):
        spec = world["specs"].get((year, str(name)))
        if spec is None:
            continue
        m = np.flatnonzero(names == name)
        g = tile_grids(spec.lon, spec.lat)
        e, n = project(lon[m], lat[m], int(g.epsg[0]))
        r = np.floor((g.top[0] - n) / 10).astype(int)
        c = np.floor((e - g.left[0]) / 10).astype(int)
        inside = (r >= 0) & (r < spec.height) & (c >= 0) & (c < spec.width)
        m, r, c = m[inside], r[inside], c[inside]  # else any covering tile may fill it
        emb = embedding_values(
            year, spec.lon, spec.lat, r[:, None], c[:, None], np.arange(spec.bands)[None, :]
        )
        sc = scale_values(year, spec.lon, spec.lat, r, c)
        np.testing.assert_array_equal(v[m], dequantise(emb, sc))
        checked += m.size
    return checked


@pytest.mark.parametrize(
    ("bbox", "zone"),
    [
        ((0.78, 49.86, 0.93, 49.97), None),  # overlapping neighbours, northern
        ((5.85, -0.08, 5.98, 0.08), 31),  # across the equator, west of the zone edge
        ((6.02, -0.08, 6.15, 0.08), 32),  # the same, east of it
        ((2.05, 70.05, 2.25, 70.15), None),  # high latitude
    ],
)
def test_region_matches_source_by_cell_ownership(
    world: dict[str, Any], store: TesseraStore, bbox: tuple[float, ...], zone: int | None
) -> None:
    ds = store.region(bbox, 2024, zone=zone)
    assert ds.embeddings.dtype == np.float32
    assert np.all(ds.x.values % 10 == 5) and np.all(ds.y.values % 10 == 5)
    assert np.all(np.diff(ds.y.values) == -10) and np.all(np.diff(ds.x.values) == 10)
    assert ds.attrs["spatial:transform"][2] == ds.x.values[0] - 5
    assert _check_region(world, ds, 2024) > 100
    assert not np.isnan(ds.embeddings.values).all(axis=-1).all()
    raw = store.region(bbox, 2024, zone=zone, dequantise=False)
    assert raw.embeddings.dtype == np.int8 and raw.scales.dtype == np.float32
    np.testing.assert_array_equal(
        dequantise(raw.embeddings.values, raw.scales.values),
        np.where(np.isnan(ds.embeddings.values), np.nan, ds.embeddings.values),
    )


def test_southern_tiles_join_the_northern_grid(store: TesseraStore) -> None:
    ds = store.region((5.85, -0.08, 5.98, 0.08), 2024, zone=31)
    assert ds.attrs["proj:code"] == "EPSG:32631"
    assert ds.y.values.min() < 0 < ds.y.values.max()  # northings below the equator are negative
    south = ds.sel(y=slice(-100, -20000))
    assert np.isfinite(south.embeddings.values).any()


def test_open_zone_selection_equals_region(store: TesseraStore) -> None:
    bbox = (0.78, 49.86, 0.93, 49.97)
    reg = store.region(bbox, 2024)
    zone = store.open_zone(31, 2024)
    assert zone.embeddings.chunks is not None
    sub = zone.sel(
        x=slice(reg.x.values[0], reg.x.values[-1]), y=slice(reg.y.values[0], reg.y.values[-1])
    ).compute()
    np.testing.assert_array_equal(sub.embeddings.values, reg.embeddings.values)
    # One pixel reads one pixel: isel is lazy down to the bytes.
    assert zone.isel(y=10, x=20).embeddings.shape == (BANDS,)


def test_open_zone_on_a_distributed_cluster(store: TesseraStore) -> None:
    import distributed

    bbox = (0.80, 49.88, 0.86, 49.92)
    reg = store.region(bbox, 2024)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        zone = store.open_zone(31, 2024)
        sub = zone.sel(
            x=slice(reg.x.values[0], reg.x.values[-1]), y=slice(reg.y.values[0], reg.y.values[-1])
        ).compute()
    np.testing.assert_array_equal(sub.embeddings.values, reg.embeddings.values)


def test_clear_errors(store: TesseraStore) -> None:
    with pytest.raises(ValueError, match="west < east"):
        store.region((1.0, 49.8, 0.7, 50.0), 2024)
    with pytest.raises(ValueError, match="non-finite"):
        store.region((np.nan, 49.8, 0.7, 50.0), 2024)
    with pytest.raises(TileNotFoundError, match="no indexed tile"):
        store.region((0.1, 49.1, 0.2, 49.2), 2024)
    with pytest.raises(TileNotFoundError, match="not indexed"):
        store.point(0.81, 49.85, 2019)
    with pytest.raises(TileNotFoundError, match="not indexed"):
        store.points([0.81], [49.85], 2019)
    with pytest.raises(LookupError):
        store.point(0.15, 49.15, 2024)
    with pytest.raises(ValueError, match="equal length"):
        store.points([0.1, 0.2], [49.0], 2024)
    with pytest.raises(ValueError, match="pixel limit"):
        store.region((0.0, 40.0, 6.0, 50.0), 2024)


def test_region_files_are_georeferenced(
    store: TesseraStore, world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import rioxarray

    from tessera_vz.cli import main as cli

    args = [
        "0.80",
        "49.88",
        "0.84",
        "49.90",
        "--year",
        "2024",
        "--store",
        str(world["out"]),
        "--allow-local-sources",
        "--json",
    ]
    reg = store.region((0.80, 49.88, 0.84, 49.90), 2024)
    assert cli(["region", *args[:4], *args[4:], "--out", str(tmp_path / "r.zarr")]) == 0
    z = xr.open_zarr(tmp_path / "r.zarr")
    np.testing.assert_array_equal(z.embeddings.values, reg.embeddings.values)
    assert cli(["region", *args, "--out", str(tmp_path / "r.nc")]) == 0
    nc = xr.open_dataset(tmp_path / "r.nc")
    np.testing.assert_array_equal(nc.embeddings.values, reg.embeddings.values)
    assert cli(["region", *args, "--out", str(tmp_path / "r.tif")]) == 0
    tif = rioxarray.open_rasterio(tmp_path / "r.tif")
    assert tif.rio.crs.to_epsg() == 32631
    assert tif.rio.transform().c == reg.x.values[0] - 5
    np.testing.assert_array_equal(tif.values, reg.embeddings.transpose("band", "y", "x").values)
    capsys.readouterr()


def test_points_cli_roundtrip(
    store: TesseraStore, world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow.parquet as pq

    from tessera_vz.cli import main as cli

    csv = tmp_path / "pts.csv"
    csv.write_text("lon,lat\n0.81,49.85\n0.93,49.97\n30.0,10.0\n")
    out = tmp_path / "out.parquet"
    assert (
        cli(
            [
                "points",
                str(csv),
                "--year",
                "2024,2025",
                "--store",
                str(world["out"]),
                "--out",
                str(out),
                "--allow-local-sources",
                "--json",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["points"] == 3 and doc["with_data"] == 4
    table = pq.read_table(out).to_pandas()
    assert len(table) == 6 and {"lon", "lat", "tile", "row", "col", "b000"} <= set(table.columns)
    first = table[(table.year == 2024)].iloc[0]
    loc = store.locate(0.81, 49.85, 2024)
    assert (first.tile, first.row, first.col) == (loc.name, loc.row, loc.col)
    np.testing.assert_array_equal(
        first[[f"b{b:03d}" for b in range(BANDS)]].to_numpy(float), store.point(0.81, 49.85, 2024)
    )


def test_point_costs_two_requests_warm_and_cold(tmp_path: Path) -> None:
    """A point is 2 ranged GETs to the tile server (< 1 KiB), warm or in a new process."""
    src = tmp_path / "src"
    specs = make_tree(src, bbox=(0.8, 49.9, 0.9, 50.0), years=(2024,), bands=128)
    spec = specs[0]
    with NginxServer(src) as server:
        run_index(
            IndexOptions(
                source=server.url, out=str(tmp_path / "ix"), manifest=str(src / "manifest.parquet")
            )
        )
        store = open_store(str(tmp_path / "ix"))
        store.point(spec.lon, spec.lat, 2024)  # warm up: repo, snapshot, table, manifests
        server.clear_log()
        value = store.point(spec.lon + 0.01, spec.lat - 0.01, 2024)
        reqs = server.requests(min_count=2)
        assert len(reqs) == 2, reqs
        assert sum(r["bytes_sent"] for r in reqs) < 1024
        assert sorted(int(r["body_bytes_sent"]) for r in reqs) == [4, 128]
        assert all(r["status"] == 206 for r in reqs)
        loc = store.locate(spec.lon + 0.01, spec.lat - 0.01, 2024)
        np.testing.assert_array_equal(value, expected_pixel(spec, loc.row, loc.col))
        # Cold: a new process adds only the repo's own (local) metadata reads.
        server.clear_log()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tessera_vz.cli",
                "point",
                str(spec.lon + 0.02),
                str(spec.lat - 0.02),
                "--year",
                "2024",
                "--store",
                str(tmp_path / "ix"),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ},
        )
        doc = json.loads(proc.stdout)
        reqs = server.requests(min_count=2)
        assert len(reqs) == 2 and sum(r["bytes_sent"] for r in reqs) < 1024
        assert doc["tile"] == spec.name and len(doc["embedding"]) == 128


def test_table_cache_is_keyed_by_snapshot(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESSERA_VZ_CACHE", str(tmp_path / "cache"))
    first = open_store(str(world["out"]), allow_local_sources=True)
    first.point(0.81, 49.85, 2024)
    cached = list((tmp_path / "cache").rglob("*.npz"))
    assert len(cached) == 1
    assert cached[0].stem == first.repo(31).lookup_branch("2024")
    second = open_store(str(world["out"]), allow_local_sources=True)
    table = second.tiles(2024, 31)
    xr.testing.assert_equal(
        table[["height", "width", "emb_chunk_rows"]],
        first.tiles(2024, 31)[["height", "width", "emb_chunk_rows"]],
    )
    np.testing.assert_array_equal(second.point(0.81, 49.85, 2024), first.point(0.81, 49.85, 2024))
