"""Points and regions agree everywhere: a point reads the pixel ``region`` returns there.

Thousands of seeded random points where the two used to disagree: within
20 m of every tile's cell edges, astride the zone 30/31 seam at lon 0, on
the equator (latitude exactly 0.0 and +-1e-6) and at 70 N, over real-size
tiles served by nginx over TLS and indexed from their manifest. Each
point's value must equal

- the pixel of ``store.region`` on the point's zone's 10 m lattice (the zone
  of the 0.1-degree cell holding it) at the point's place, or both be no
  data; and
- the value recomputed with ``np.load`` from the tile and pixel the reader
  says it read.

The regions are checked against the generator's formulas by
``test_regions.py``; here they are the reference for points. Trees have no
invalid-scale patch, so NaN means "no tile covers it".
"""

from __future__ import annotations

import json
import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pyproj import CRS

from tessera_vz.cli import main as cli
from tessera_vz.core.errors import TileNotFoundError
from tessera_vz.core.geometry import project, tile_grids
from tessera_vz.reader import open_store
from tessera_vz.reader.store import TesseraStore, dequantise
from tessera_vz.testing.tiles import make_tree
from tessera_vz.testing.tls import TestCA

from .conftest import indexed_over_https

YEAR = 2024
BANDS = 2
#: Blocks of tiles: (lon centres, lat centres, cells left out).
BLOCKS = {
    "equator": ((-0.05, 0.05), (-0.05, 0.05), ()),  # zones 30/31, both hemispheres
    "arctic": ((-0.05, 0.05, 0.15), (70.05, 70.15), ((0.05, 70.15),)),  # 70 N, one hole
}
#: Degrees around each block that regions read (so no point lies at a grid edge).
PAD = 0.01
M_PER_DEG = 111_320.0


def cell_zone(lon: np.ndarray) -> np.ndarray:
    """UTM zone of the 0.1-degree cell holding each longitude (the brief's zone formula)."""
    centre = (np.floor(lon * 10 + 1e-9) + 0.5) / 10
    return np.floor((centre + 180) / 6).astype(np.int64) + 1


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, https: TestCA) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("agree-src")
    out = tmp_path_factory.mktemp("agree-index")
    specs = []
    for lons, lats, holes in BLOCKS.values():
        cells = [(lo, la) for lo in lons for la in lats if (lo, la) not in holes]
        specs += make_tree(
            root, centres=cells, years=(YEAR,), bands=BANDS, manifest=False, invalid_patch=False
        )
    with indexed_over_https(root, specs, https, out) as url:
        yield {"root": root, "out": out, "url": url, "names": {s.name for s in specs}}


@pytest.fixture(scope="module")
def store(world: dict[str, Any]) -> TesseraStore:
    return open_store(str(world["out"]), allowed_sources=[world["url"]])


def random_points(seed: int = 21) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Seeded points of each kind (lon, lat arrays), all inside the blocks' padded boxes."""
    rng = np.random.default_rng(seed)
    kinds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for block, (lons, lats, _) in BLOCKS.items():
        w, e = min(lons) - 0.05, max(lons) + 0.05
        s, n = min(lats) - 0.05, max(lats) + 0.05
        mid = (s + n) / 2
        m_lon = M_PER_DEG * math.cos(math.radians(mid))
        # Along every cell edge (meridians and parallels of the block), +-20 m across it.
        edges_lon = np.round(np.arange(w, e + 1e-9, 0.1), 2)
        edges_lat = np.round(np.arange(s, n + 1e-9, 0.1), 2)
        k = 400
        lon_a = rng.choice(edges_lon, k) + rng.uniform(-20, 20, k) / m_lon
        lat_a = rng.uniform(s, n, k)
        lat_b = rng.choice(edges_lat, k) + rng.uniform(-20, 20, k) / M_PER_DEG
        lon_b = rng.uniform(w, e, k)
        kinds[f"{block} meridian edges"] = (lon_a, lat_a)
        kinds[f"{block} parallel edges"] = (lon_b, lat_b)
        # Cell corners: both at once.
        kinds[f"{block} corners"] = (
            rng.choice(edges_lon, k) + rng.uniform(-20, 20, k) / m_lon,
            rng.choice(edges_lat, k) + rng.uniform(-20, 20, k) / M_PER_DEG,
        )
        # The zone 30/31 seam at lon 0, within 35 m.
        kinds[f"{block} seam"] = (rng.uniform(-35, 35, k) / m_lon, rng.uniform(s, n, k))
        kinds[f"{block} anywhere"] = (rng.uniform(w, e, 200), rng.uniform(s, n, 200))
    lon_eq = rng.uniform(-0.099, 0.099, 300)  # inside the block (its outer edge may be bare)
    kinds["equator 0.0"] = (lon_eq, np.zeros(300))
    off = np.concatenate([np.full(300, 1e-6), np.full(300, -1e-6)])
    kinds["equator +-1e-6"] = (np.concatenate([lon_eq, lon_eq]), off)
    return kinds


def region_values(store: TesseraStore, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """The value of ``store.region`` at each point, on its zone's lattice (NaN: no data).

    One region per block and zone (every point lies well inside it), on
    ``zone=`` the zone of the point's cell; the pixel is the grid pixel
    whose square holds the point.
    """
    out = np.full((lon.size, BANDS), np.nan, np.float32)
    zones = cell_zone(lon)
    for lons, lats, _ in BLOCKS.values():
        bbox = (min(lons) - 0.05 - PAD, min(lats) - 0.05 - PAD,
                max(lons) + 0.05 + PAD, max(lats) + 0.05 + PAD)  # fmt: skip
        inside = (lon > bbox[0]) & (lon < bbox[2]) & (lat > bbox[1]) & (lat < bbox[3])
        for z in np.unique(zones[inside]).tolist():
            sel = np.flatnonzero(inside & (zones == z))
            ds = store.region(bbox, YEAR, zone=z)
            x, y = ds["x"].values, ds["y"].values
            epsg = CRS.from_wkt(ds["spatial_ref"].attrs["crs_wkt"]).to_epsg()
            assert epsg in (32600 + z, 32700 + z)
            e, n = project(lon[sel], lat[sel], epsg)
            col = np.floor((e - (x[0] - 5)) / 10).astype(np.int64)
            row = np.floor(((y[0] + 5) - n) / 10).astype(np.int64)
            assert (col >= 1).all() and (col < x.size - 1).all(), "a point at the grid's edge"
            assert (row >= 1).all() and (row < y.size - 1).all(), "a point at the grid's edge"
            out[sel] = ds["embeddings"].values[row, col]
    return out


def from_npy(root: Path, tiles: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Dequantised values at (tile, row, col) recomputed from ``np.load`` of the sources."""
    out = np.full((tiles.size, BANDS), np.nan, np.float32)
    for name in np.unique(tiles[tiles != ""]).tolist():
        sel = np.flatnonzero(tiles == name)
        base = root / str(YEAR) / name / name
        emb = np.load(f"{base}.npy", mmap_mode="r")
        scale = np.load(f"{base}_scales.npy", mmap_mode="r")
        r, c = rows[sel], cols[sel]
        assert (r >= 0).all() and (r < emb.shape[0]).all() and (c >= 0).all()
        assert (c < emb.shape[1]).all()
        out[sel] = dequantise(np.asarray(emb[r, c]), np.asarray(scale[r, c]))
    return out


def same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: equal bands, or both no data (all NaN)."""
    both_nan = np.isnan(a).all(axis=1) & np.isnan(b).all(axis=1)
    return both_nan | (a == b).all(axis=1)


def outside_own_tile(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Points whose pixel lies outside their own cell's tile (the old reader's 'no tile')."""
    clon = (np.floor(lon * 10 + 1e-9) + 0.5) / 10
    clat = (np.floor(lat * 10 + 1e-9) + 0.5) / 10
    g = tile_grids(clon, clat)
    out = np.zeros(lon.size, bool)
    for code in np.unique(g.epsg).tolist():
        m = g.epsg == code
        e, n = project(lon[m], lat[m], code)
        r = np.floor((g.top[m] - n) / 10)
        c = np.floor((e - g.left[m]) / 10)
        out[m] = (r < 0) | (r >= g.height[m]) | (c < 0) | (c >= g.width[m])
    return out


def indexed_around(lon: np.ndarray, lat: np.ndarray, names: set[str]) -> np.ndarray:
    """Points whose cell, and the cells within 30 m of them, are all indexed."""
    ok = np.ones(lon.size, bool)
    m_lon = M_PER_DEG * np.cos(np.radians(lat))
    for d_lon in (-30, 0, 30):
        for d_lat in (-30, 0, 30):
            a = (np.floor((lon + d_lon / m_lon) * 10 + 1e-9) + 0.5) / 10
            b = (np.floor((lat + d_lat / M_PER_DEG) * 10 + 1e-9) + 0.5) / 10
            cells = [f"grid_{x:.2f}_{y:.2f}" for x, y in zip(a, b, strict=True)]
            ok &= np.isin(cells, sorted(names))
    return ok


def test_points_equal_the_region_and_the_source(store: TesseraStore, world: dict[str, Any]) -> None:
    kinds = random_points()
    lon = np.concatenate([v[0] for v in kinds.values()])
    lat = np.concatenate([v[1] for v in kinds.values()])
    kind = np.concatenate([np.full(v[0].size, k, dtype=object) for k, v in kinds.items()])
    assert lon.size >= 4000
    points = store.points(lon, lat, YEAR)
    expected = region_values(store, lon, lat)
    agree = same(points, expected)
    bad = np.flatnonzero(~agree)
    assert bad.size == 0, (
        f"{bad.size} of {lon.size} points differ from the region, e.g. "
        f"{[(kind[i], float(lon[i]), float(lat[i])) for i in bad[:5]]}"
    )
    # The reader's pixel, recomputed from the files with numpy.
    loc = store.locate_points(lon, lat, YEAR)
    tiles = np.where(loc.ok, loc.tile, "").astype(str)
    assert same(points, from_npy(world["root"], tiles, loc.row, loc.col)).all()
    assert (np.isnan(points).all(axis=1) == ~loc.ok).all()
    # The test reaches what the old reader got wrong, and reads it.
    fallback = outside_own_tile(lon, lat) & loc.ok
    assert fallback.sum() > 100, fallback.sum()
    for k in ("equator 0.0", "equator +-1e-6"):
        assert loc.ok[kind == k].all(), f"{k}: {np.sum(~loc.ok[kind == k])} points without data"
    # Every point amid indexed cells has data, at the seam too (a tile stops up to
    # 15 m short of its cell's south and east edges: only a bare neighbour leaves a gap).
    amid = indexed_around(lon, lat, world["names"])
    assert amid.sum() > lon.size // 2
    missed = np.flatnonzero(amid & ~loc.ok)
    assert missed.size == 0, [(kind[i], lon[i], lat[i]) for i in missed[:5]]


def test_point_sample_and_viewer_read_the_same_pixel(
    store: TesseraStore, world: dict[str, Any]
) -> None:
    """``point``, ``sample`` and ``/api/point`` agree with ``points`` (the same rule)."""
    from tessera_vz.serve.app import create_app

    from .test_serve_api import running

    rng = np.random.default_rng(5)
    lon = np.concatenate([rng.uniform(-0.1, 0.1, 8), [-0.05, 0.0, 0.03]])
    lat = np.concatenate([np.zeros(8), [0.0, 1e-6, -1e-6]])
    many = store.points(lon, lat, YEAR)
    table = store.sample(pa.table({"lon": lon, "lat": lat}), YEAR)
    assert table["status"].to_pylist() == ["ok"] * lon.size
    sampled = np.array([table[f"b{b:03d}"].to_numpy() for b in range(BANDS)]).T
    np.testing.assert_array_equal(sampled, many)
    loc = store.locate_points(lon, lat, YEAR)
    assert table["tile"].to_pylist() == loc.tile.tolist()
    with running(create_app(open_store(store.root, allowed_sources=[world["url"]]))) as base:
        for i in range(lon.size):
            one = store.point(float(lon[i]), float(lat[i]), YEAR)
            np.testing.assert_array_equal(one, many[i])
            at = store.locate(float(lon[i]), float(lat[i]), YEAR)
            assert (at.name, at.row, at.col) == (loc.tile[i], loc.row[i], loc.col[i])
            url = f"{base}/api/point?lon={float(lon[i])!r}&lat={float(lat[i])!r}&year={YEAR}"
            with urllib.request.urlopen(url, timeout=60) as r:
                doc = json.loads(r.read())
            assert (doc["tile"], doc["row"], doc["col"]) == (at.name, at.row, at.col)
            np.testing.assert_array_equal(np.array(doc["embedding"], np.float32), many[i])


def test_point_messages(store: TesseraStore, world: dict[str, Any]) -> None:
    """A year as a string is a year; swapped coordinates are named as such."""
    np.testing.assert_array_equal(store.point(0.03, 0.0, "2024"), store.point(0.03, 0.0, 2024))
    with pytest.raises(TypeError, match=r"year must be an int.*got float 2024\.5"):
        store.point(0.03, 0.0, 2024.5)  # type: ignore[arg-type]
    with pytest.raises(TileNotFoundError, match="lon/lat may be swapped"):
        store.point(70.08, 0.02, 2024)
    with pytest.raises(TileNotFoundError, match=r"no tile grid_0\.05_70\.15") as info:
        store.point(0.05, 70.15, 2024)  # the hole's centre, beyond its neighbours' overhang
    assert "swapped" not in str(info.value)


def test_cli_point_years_and_swapped(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    read = ["--store", str(world["out"]), "--allow-source", world["url"]]
    assert cli(["point", "0.03", "0.0", "--year", "2024", "--json", *read]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["year"] == 2024 and doc["embedding"][0] is not None
    assert cli(["point", "70.08", "0.02", "--year", "2024", *read]) == 2
    err = capsys.readouterr().err
    assert "no indexed tile is near lon=70.08, lat=0.02" in err
    assert "lon/lat may be swapped" in err


def test_cold_points_of_a_published_copy_read_the_same_pixels(
    store: TesseraStore,
    world: dict[str, Any],
    https: TestCA,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Points read through the table blocks (never the table) agree, at every edge kind.

    The equator block straddles four one-degree blocks (lon 0 and lat 0 are
    block edges), so points there need the blocks around them, not only their own.
    """
    from tessera_vz.core import published
    from tessera_vz.testing.nginx import NginxServer

    monkeypatch.setattr(published, "_PROXY", None)  # a new process: no proxy, no cache
    monkeypatch.setenv("TESSERA_VZ_CACHE", str(tmp_path / "cache"))
    kinds = random_points(seed=8)
    lon = np.concatenate([v[0][:25] for v in kinds.values()])
    lat = np.concatenate([v[1][:25] for v in kinds.values()])

    def one(s: TesseraStore, x: float, y: float) -> np.ndarray | None:
        try:
            return s.point(x, y, YEAR)
        except TileNotFoundError:
            return None

    want = [one(store, x, y) for x, y in zip(lon.tolist(), lat.tolist(), strict=True)]
    # Points with data first: they must read no snapshot or manifest. Then those without
    # (explaining why there is no tile may read the whole table: only then).
    order = sorted(range(lon.size), key=lambda i: want[i] is None)
    with NginxServer(world["out"], tls=https) as server:
        cold = open_store(server.url, allowed_sources=[world["url"]], allow_private_sources=True)
        differ, asked = [], []
        for i in order:
            if want[i] is None and not asked:
                asked = [r["uri"] for r in server.requests()]
            got = one(cold, float(lon[i]), float(lat[i]))
            w = want[i]
            if (got is None) != (w is None) or (
                got is not None and w is not None and not same(got[None], w[None]).all()
            ):
                differ.append((float(lon[i]), float(lat[i])))
        asked = asked or [r["uri"] for r in server.requests()]
    assert not differ, f"{len(differ)} of {lon.size} cold points differ, e.g. {differ[:5]}"
    assert sum(w is not None for w in want) > lon.size // 2
    assert any("/tessera-tables/" in u for u in asked), asked[:10]
    assert not [u for u in asked if "/snapshots/" in u or "/manifests/" in u], asked[:10]
