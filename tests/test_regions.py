"""Regions across UTM zones and in any CRS, checked pixel by pixel against the sources.

Every expected value is recomputed from the tile generator's formulas and the
geometry of the design brief (``tile_grids``), not from the reader: for each
output pixel centre ``p``, the zone of the 0.1-degree cell holding ``p``, the
pixel of that zone's 10 m lattice containing ``p``, and the tile whose cell
holds that lattice pixel's centre (the documented rule of
``tessera_vz.reader.resample``). Trees are written without the invalid-scale
patch, so a NaN can only mean "no tile".
"""

from __future__ import annotations

import itertools
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from pyproj import CRS, Geod, Transformer

from tessera_vz.core.errors import ConfigurationError, TileNotFoundError
from tessera_vz.core.geometry import project, tile_grids, unproject, utm_zone
from tessera_vz.core.loop import sync
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.reader.mosaic import read_window
from tessera_vz.reader.store import TesseraStore, dequantise
from tessera_vz.reader.windows import window_for_bbox
from tessera_vz.testing.tiles import TileSpec, embedding_values, make_tree, scale_values

BANDS = 4
#: Trees astride zone boundaries: (bbox of tiles, years).
TREES = {
    "greenwich": ((-0.2, 52.1, 0.2, 52.25), (2024, 2025)),  # zones 30/31 at 52 N (the case)
    "equator": ((5.8, -0.1, 6.2, 0.1), (2024,)),  # zones 31/32, both hemispheres
    "arctic": ((5.85, 69.95, 6.15, 70.1), (2024,)),  # zones 31/32 at 70 N
    "south": ((-0.2, -45.15, 0.2, -45.0), (2024,)),  # zones 30/31 at 45 S, one tile missing
}
#: A zone-31 tile removed from the southern tree: its cell is covered only by
#: the overhang of its zone-30 neighbour's rectangle (rule step 3).
MISSING = "grid_0.05_-45.05"
#: Regions read in the tests: (tree, bbox).
REGIONS = {
    "greenwich": (-0.12, 52.12, 0.08, 52.22),
    "equator": (5.88, -0.06, 6.1, 0.07),
    "arctic": (5.9, 70.0, 6.1, 70.08),
    "south": (-0.15, -45.14, 0.09, -45.02),
}


@pytest.fixture(scope="module")
def cross(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cross")
    specs: list[TileSpec] = []
    for bbox, years in TREES.values():
        specs += make_tree(
            root, bbox=bbox, years=years, bands=BANDS, manifest=False, invalid_patch=False
        )
    shutil.rmtree(root / "2024" / MISSING)
    specs = [s for s in specs if (s.year, s.name) != (2024, MISSING)]
    out = tmp_path_factory.mktemp("cross-index")
    report = run_index(IndexOptions(source=str(root), out=str(out)))
    assert not report.failed
    return {"root": root, "out": out, "specs": specs}


@pytest.fixture(scope="module")
def store(cross: dict[str, Any]) -> TesseraStore:
    return open_store(str(cross["out"]), allow_local_sources=True)


class Tiles:
    """The generated tiles of one year, found by cell, with their geometry."""

    def __init__(self, specs: list[TileSpec], year: int) -> None:
        self.by_cell: dict[tuple[int, int], tuple[TileSpec, Any]] = {}
        for s in specs:
            if s.year == year:
                key = (math.floor(s.lon * 10), math.floor(s.lat * 10))
                self.by_cell[key] = (s, tile_grids(s.lon, s.lat))
        self.year = year

    def zone_tiles(self, zone: int) -> Iterator[tuple[TileSpec, Any]]:
        return (v for v in self.by_cell.values() if int(v[1].zone[0]) == zone)

    def values(self, spec: TileSpec, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        b = np.arange(BANDS)[None, :]
        emb = embedding_values(self.year, spec.lon, spec.lat, r[:, None], c[:, None], b)
        if spec.scales_per_band:
            scale = scale_values(
                self.year, spec.lon, spec.lat, r[:, None], c[:, None], b, invalid_patch=False
            )
        else:
            scale = scale_values(self.year, spec.lon, spec.lat, r, c, invalid_patch=False)
        return dequantise(emb, scale)


def _rowcol(g: Any, gr: np.ndarray, gc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A tile's (row, col) of global lattice pixels (rows southwards on the northern lattice)."""
    top = float(g.top[0]) - (10_000_000.0 if int(g.epsg[0]) > 32700 else 0.0)
    return gr + round(top / 10), gc - round(float(g.left[0]) / 10)


def cell_zone(lon: np.ndarray) -> np.ndarray:
    return utm_zone((np.floor(lon * 10) + 0.5) / 10)


def lattice(lon: np.ndarray, lat: np.ndarray, zone: int) -> tuple[np.ndarray, np.ndarray]:
    e, n = project(lon, lat, 32600 + zone)
    return np.floor(-n / 10).astype(np.int64), np.floor(e / 10).astype(np.int64)


def by_rule(tiles: Tiles, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values of the documented rule's steps 1-2 where the lattice pixel's cell tile covers it.

    Returns ``(values, known)``; other pixels (another covering tile, or
    steps 3-4) are not known here.
    """
    values = np.full((lon.size, BANDS), np.nan, np.float32)
    known = np.zeros(lon.size, bool)
    zp = cell_zone(lon)
    for z in np.unique(zp).tolist():
        m = np.flatnonzero(zp == z)
        gr, gc = lattice(lon[m], lat[m], z)
        clon, clat = unproject(10.0 * gc + 5, -(10.0 * gr + 5), 32600 + z)
        ki, kj = np.floor(clon * 10).astype(int), np.floor(clat * 10).astype(int)
        for a, b in set(zip(ki.tolist(), kj.tolist(), strict=True)):
            found = tiles.by_cell.get((a, b))
            if found is None or int(found[1].zone[0]) != z:
                continue
            spec, g = found
            sel = np.flatnonzero((ki == a) & (kj == b))
            r, c = _rowcol(g, gr[sel], gc[sel])
            inside = (r >= 0) & (r < spec.height) & (c >= 0) & (c < spec.width)
            sel, r, c = sel[inside], r[inside], c[inside]
            values[m[sel]] = tiles.values(spec, r, c)
            known[m[sel]] = True
    return values, known


def covering(tiles: Tiles, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Whether any indexed tile (any zone) has a pixel containing each point."""
    has = np.zeros(lon.size, bool)
    for z in sorted({int(g.zone[0]) for _, g in tiles.by_cell.values()}):
        gr, gc = lattice(lon, lat, z)
        for spec, g in tiles.zone_tiles(z):
            r, c = _rowcol(g, gr, gc)
            has |= (r >= 0) & (r < spec.height) & (c >= 0) & (c < spec.width)
    return has


def pixel_lonlat(ds: xr.Dataset, every: int = 1) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.meshgrid(ds.y.values[::every], ds.x.values[::every], indexing="ij")
    crs = CRS.from_wkt(ds.spatial_ref.attrs["crs_wkt"])
    to_ll = Transformer.from_crs(crs, 4326, always_xy=True)
    lon, lat = to_ll.transform(xx.ravel(), yy.ravel())
    return np.asarray(lon), np.asarray(lat)


def check_by_rule(
    ds: xr.Dataset, tiles: Tiles, every: int = 2, min_known: float = 0.9
) -> dict[str, Any]:
    """Every pixel the rule determines equals its source; none with a source is NaN."""
    lon, lat = pixel_lonlat(ds, every)
    values = ds.embeddings.values[::every, ::every].reshape(-1, BANDS)
    expected, known = by_rule(tiles, lon, lat)
    np.testing.assert_array_equal(values[known], expected[known])
    assert known.mean() > min_known, known.mean()
    has = covering(tiles, lon, lat)
    nan = np.isnan(values).all(axis=1)
    assert not (nan & has).any(), f"{int((nan & has).sum())} NaN pixels where a tile has data"
    zones = cell_zone(lon)
    return {
        "per_zone": {int(z): int((~nan & (zones == z)).sum()) for z in np.unique(zones)},
        "known": int(known.sum()),
        "nan": int(nan.sum()),
    }


@pytest.mark.parametrize("name", sorted(REGIONS))
@pytest.mark.parametrize("crs", [None, "EPSG:4326"])
def test_region_across_zones_equals_sources(
    cross: dict[str, Any], store: TesseraStore, name: str, crs: str | None
) -> None:
    bbox = REGIONS[name]
    ds = store.region(bbox, 2024, crs=crs)
    # In the southern tree a tile is missing: its cell's pixels are unknown to the rule's steps 1-2.
    got = check_by_rule(ds, Tiles(cross["specs"], 2024), min_known=0.7 if name == "south" else 0.9)
    # Both sides of the boundary are filled: thousands of pixels from each zone.
    assert len(got["per_zone"]) == 2 and min(got["per_zone"].values()) > 2000, got
    if name != "south":  # every tile present: no NaN at all, seams included
        assert got["nan"] == 0, got
    centre_zone = int(utm_zone((bbox[0] + bbox[2]) / 2))
    zones = sorted(got["per_zone"])
    assert ds.attrs["tessera:zones"] == zones
    assert ds.attrs["tessera:versions"] == " ".join(f"utm{z:02d}/2024-v1" for z in zones)
    if crs is None:
        # A bbox wholly south of the equator is on the zone's southern CRS (positive northings).
        south = bbox[3] <= 0
        assert ds.attrs["proj:code"] == f"EPSG:{(32700 if south else 32600) + centre_zone}"
        if south:
            assert (ds.y.values > 0).all()
        assert ds.attrs["tessera:zone"] == centre_zone
        assert "zone of the bbox centre" in ds.attrs["tessera:grid"]
        assert np.all(ds.x.values % 10 == 5) and np.all(ds.y.values % 10 == 5)
    else:
        assert ds.attrs["proj:code"] == "EPSG:4326" and "tessera:zone" not in ds.attrs
        assert ds.attrs["tessera:grid"].startswith("EPSG:4326 at ")


def test_region_in_one_zone_is_todays_mosaic_byte_for_byte(store: TesseraStore) -> None:
    """Inside one zone the default grid is the zone mosaic: no pixel resampled."""
    bbox = (-0.15, 52.11, -0.03, 52.2)
    window = window_for_bbox(bbox)
    source, rects = store.zone_year(window.zone, 2024)
    emb, scale, filled = sync(read_window(source, window, rects))
    raw = store.region(bbox, 2024, dequantise=False)
    assert raw.embeddings.values.tobytes() == emb.tobytes()
    assert raw.scales.values.tobytes() == scale.tobytes()
    ds = store.region(bbox, 2024)
    today = dequantise(emb, scale)
    today[~filled] = np.nan
    assert ds.embeddings.values.tobytes() == today.tobytes()
    assert ds.attrs["spatial:transform"] == [10.0, 0.0, window.left, 0.0, -10.0, window.top]
    # And it is the zone's lazy mosaic, selected.
    zone = store.open_zone(window.zone, 2024)
    x, y = ds.x.values, ds.y.values
    sub = zone.sel(x=slice(x[0], x[-1]), y=slice(y[0], y[-1]))
    assert sub.embeddings.values.tobytes() == ds.embeddings.values.tobytes()


def test_raw_region_across_zones_keeps_values_and_scales_together(
    cross: dict[str, Any], store: TesseraStore
) -> None:
    bbox = REGIONS["greenwich"]
    for crs in (None, "EPSG:4326"):
        ds = store.region(bbox, 2024, crs=crs)
        raw = store.region(bbox, 2024, crs=crs, dequantise=False)
        assert raw.embeddings.dtype == np.int8 and raw.scales.dtype == np.float32
        assert raw.scales.dims == ("y", "x")
        again = dequantise(raw.embeddings.values, raw.scales.values)
        np.testing.assert_array_equal(again, ds.embeddings.values)
        # Raw values are the source's int8 and float32, not a rounding of floats.
        lon, lat = pixel_lonlat(raw, 3)
        tiles = Tiles(cross["specs"], 2024)
        expected, known = by_rule(tiles, lon, lat)
        scales = raw.scales.values[::3, ::3].ravel()[known]
        emb = raw.embeddings.values[::3, ::3].reshape(-1, BANDS)[known]
        np.testing.assert_array_equal(emb * scales[:, None], expected[known])


def test_years_give_a_time_axis_across_zones(store: TesseraStore) -> None:
    bbox = (-0.03, 52.13, 0.03, 52.16)
    both = store.region(bbox, years=[2024, 2025], crs="EPSG:4326")
    assert both.embeddings.dims == ("time", "y", "x", "band")
    assert both.time.values.tolist() == [2024, 2025]
    for t, year in enumerate((2024, 2025)):
        one = store.region(bbox, year, crs="EPSG:4326")
        np.testing.assert_array_equal(both.embeddings.values[t], one.embeddings.values)
    assert not np.array_equal(both.embeddings.values[0], both.embeddings.values[1])
    tags = "utm30/2024-v1 utm30/2025-v1 utm31/2024-v1 utm31/2025-v1"
    assert both.attrs["tessera:versions"] == tags


def test_missing_tile_is_filled_from_the_neighbour_zones_overhang(
    cross: dict[str, Any], store: TesseraStore
) -> None:
    """Step 3: where a pixel's own zone has no tile, the adjacent zone's pixel there."""
    ds = store.region((-0.02, -45.1, 0.1, -45.0), 2024)  # zone 31 grid; its tile 0.05/-45.05 gone
    lon, lat = pixel_lonlat(ds)
    values = ds.embeddings.values.reshape(-1, BANDS)
    in_missing = (np.floor(lon * 10) == 0) & (np.floor(lat * 10) == -451)
    tiles = Tiles(cross["specs"], 2024)
    filled = values[in_missing]
    # Step 2 first: zone 31's other tiles overhang into the cell; then step 3: zone 30's.
    steps = {}
    for z in (31, 30):
        gr, gc = lattice(lon[in_missing], lat[in_missing], z)
        inside = np.zeros(gr.size, bool)
        match = np.zeros(gr.size, bool)
        for spec, g in tiles.zone_tiles(z):  # the pixel of any covering tile of the zone
            r, c = _rowcol(g, gr, gc)
            mine = (r >= 0) & (r < spec.height) & (c >= 0) & (c < spec.width)
            inside |= mine
            match[mine] |= (filled[mine] == tiles.values(spec, r[mine], c[mine])).all(axis=1)
        steps[z] = (inside, match)
    own, (inside, match) = steps[31][0], steps[30]
    assert steps[31][1][own].all()
    step3 = inside & ~own
    assert step3.sum() > 2000  # the zone-30 tile's overhang: a strip of the cell
    assert match[step3].all()
    # No tile has data there (step 4 fills a fringe one pixel wide along the covered part).
    nothing = ~inside & ~own
    assert nothing.sum() > 100_000 and np.isnan(filled[nothing]).mean() > 0.99
    elsewhere = ~in_missing & covering(tiles, lon, lat)
    assert elsewhere.sum() > 100_000 and np.isfinite(values[elsewhere]).all()


def test_seam_between_zones_is_filled_by_the_nearest_pixel(
    cross: dict[str, Any], store: TesseraStore
) -> None:
    """Step 4: at the equator both zones' tiles stop a few metres short of 6 E."""
    ds = store.region((5.99, -0.06, 6.01, 0.06), 2024)
    lon, lat = pixel_lonlat(ds)
    values = ds.embeddings.values.reshape(-1, BANDS)
    tiles = Tiles(cross["specs"], 2024)
    gap = ~covering(tiles, lon, lat)
    assert gap.sum() > 500  # a seam along the boundary that no source pixel contains
    assert np.isfinite(values).all()
    # Each seam pixel holds a source pixel from within one lattice pixel of it.
    for i in np.flatnonzero(gap)[::50]:
        near = []
        for z in (31, 32):
            gr, gc = lattice(lon[i : i + 1], lat[i : i + 1], z)
            for spec, g in tiles.zone_tiles(z):
                rr, cc = np.meshgrid(gr + np.arange(-1, 2), gc + np.arange(-1, 2), indexing="ij")
                r, c = _rowcol(g, rr.ravel(), cc.ravel())
                ok = (r >= 0) & (r < spec.height) & (c >= 0) & (c < spec.width)
                if ok.any():
                    near.append(tiles.values(spec, r[ok], c[ok]))
        assert any((v == values[i]).all(axis=1).any() for v in near), i


def test_grid_in_any_crs_is_georeferenced(cross: dict[str, Any], store: TesseraStore) -> None:
    import rioxarray  # noqa: F401  (the .rio accessor)
    from affine import Affine

    bbox = REGIONS["greenwich"]
    ds = store.region(bbox, 2024, crs="EPSG:4326")
    xres, yres = 0.00015, 0.00009  # ~10 m at 52.17 N, two significant digits
    assert ds.rio.crs.to_epsg() == 4326
    left, top = -0.12, 580223 * yres  # -0.12 is on the grid; 52.22 is not
    assert ds.rio.transform().almost_equals(Affine(xres, 0, left, 0, -yres, top))
    np.testing.assert_allclose(ds.attrs["spatial:transform"], [xres, 0, left, 0, -yres, top])
    np.testing.assert_allclose(ds.x.values[:2], [left + xres / 2, left + 1.5 * xres])
    assert ds.x.attrs["standard_name"] == "longitude" and ds.x.attrs["units"] == "degrees_east"
    assert ds.y.attrs["standard_name"] == "latitude" and ds.y.attrs["units"] == "degrees_north"
    assert left <= bbox[0] < bbox[2] <= ds.x.values[-1] + xres / 2
    # About 10 m on the ground, along both axes.
    geod = Geod(ellps="WGS84")
    lat = (bbox[1] + bbox[3]) / 2
    assert 9.5 < geod.inv(0, lat, xres, lat)[2] < 10.5
    assert 9.5 < geod.inv(0, lat, 0, lat + yres)[2] < 10.5
    # Any projected CRS, with the resolution in its units, one value or (x, y).
    merc = store.region(bbox, 2024, crs=3857, resolution=(20, 15))
    assert merc.rio.crs.to_epsg() == 3857 and merc.attrs["proj:code"] == "EPSG:3857"
    assert merc.rio.resolution() == (20.0, -15.0)
    assert merc.x.attrs["units"] == "m"
    assert merc.x.attrs["standard_name"] == "projection_x_coordinate"
    check_by_rule(merc, Tiles(cross["specs"], 2024), every=1, min_known=0.9)
    # A UTM CRS asked for explicitly at 10 m is that zone's lattice: the default grid.
    utm = store.region(bbox, 2024, crs="EPSG:32630")
    xr.testing.assert_identical(utm.drop_attrs(), store.region(bbox, 2024).drop_attrs())
    assert "as requested" in utm.attrs["tessera:grid"]


def test_southern_utm_crs_and_other_zones(cross: dict[str, Any], store: TesseraStore) -> None:
    """A southern UTM CRS is a zone lattice too; another zone's grid resamples this one."""
    bbox = REGIONS["south"]
    south = store.region(bbox, 2024, crs="EPSG:32731")
    north = store.region(bbox, 2024, crs="EPSG:32631")
    assert south.attrs["tessera:zone"] == 31
    # Wholly south of the equator, a zone's default grid is its southern CRS.
    xr.testing.assert_identical(store.region(bbox, 2024, zone=31).drop_attrs(), south.drop_attrs())
    np.testing.assert_array_equal(south.y.values - 10_000_000, north.y.values)
    assert south.embeddings.values.tobytes() == north.embeddings.values.tobytes()
    assert south.rio.crs.to_epsg() == 32731
    check_by_rule(south, Tiles(cross["specs"], 2024), min_known=0.7)


def test_region_argument_errors(store: TesseraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    bbox = REGIONS["greenwich"]
    with pytest.raises(ConfigurationError, match="not both"):
        store.region(bbox, 2024, crs="EPSG:4326", zone=31)
    with pytest.raises(ConfigurationError, match="pyproj understands"):
        store.region(bbox, 2024, crs="EPSG:999999")
    with pytest.raises(ConfigurationError, match="resolution must be a positive"):
        store.region(bbox, 2024, crs="EPSG:4326", resolution=-1)
    with pytest.raises(ConfigurationError, match="resolution must be"):
        store.region(bbox, 2024, resolution=(1, 2, 3))
    with pytest.raises(ConfigurationError, match="UTM zone number"):
        store.region(bbox, 2024, zone=61)
    # A coarse grid: few output pixels, but each zone's window is read whole.
    monkeypatch.setattr("tessera_vz.reader.regions.MAX_PIXELS", 1_000_000)
    with pytest.raises(ValueError, match="source pixels"):
        store.region(REGIONS["greenwich"], 2024, crs="EPSG:4326", resolution=0.001)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="pixel limit"):
        store.region((-3.0, 40.0, 3.0, 56.0), 2024, crs="EPSG:4326")
    with pytest.raises(TileNotFoundError, match="no indexed tile covers"):
        store.region((-0.5, 51.0, -0.4, 51.1), 2024, crs="EPSG:4326")
    with pytest.raises(TileNotFoundError, match="not indexed"):
        store.region(bbox, 2019)


def test_cli_region_crs_and_resolution(
    store: TesseraStore, cross: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import rioxarray

    from tessera_vz.cli import main as cli

    bbox = REGIONS["greenwich"]
    out = tmp_path / "cross.tif"
    code = cli(
        ["region", *map(str, bbox), "--year", "2024", "--store", str(cross["out"]),
         "--allow-local-sources", "--crs", "EPSG:4326", "--resolution", "0.0002,0.0001",
         "--out", str(out), "--json"]
    )  # fmt: skip
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["proj:code"] == "EPSG:4326"
    reg = store.region(bbox, 2024, crs="EPSG:4326", resolution=(0.0002, 0.0001))
    tif = rioxarray.open_rasterio(out)
    assert tif.rio.crs.to_epsg() == 4326
    assert tif.rio.transform().almost_equals(reg.rio.transform())
    np.testing.assert_array_equal(tif.values, reg.embeddings.transpose("band", "y", "x").values)
    assert np.isfinite(tif.values).all()  # both zones, no seam


def test_per_band_scales_across_zones(tmp_path: Path) -> None:
    """Older runs' (H, W, bands) scales travel with their pixels across zones too."""
    src, out = tmp_path / "src", tmp_path / "index"
    specs = make_tree(
        src, centres=[(-0.05, 52.15), (0.05, 52.15)], years=(2024,), bands=BANDS,
        scales_per_band=True, manifest=False, invalid_patch=False,
    )  # fmt: skip
    run_index(IndexOptions(source=str(src), out=str(out)))
    store = open_store(str(out), allow_local_sources=True)
    for crs in (None, "EPSG:4326"):
        raw = store.region((-0.03, 52.12, 0.03, 52.18), 2024, crs=crs, dequantise=False)
        assert raw.scales.dims == ("y", "x", "band")
        ds = store.region((-0.03, 52.12, 0.03, 52.18), 2024, crs=crs)
        np.testing.assert_array_equal(
            dequantise(raw.embeddings.values, raw.scales.values), ds.embeddings.values
        )
        got = check_by_rule(ds, Tiles(specs, 2024))
        assert got["nan"] == 0 and min(got["per_zone"].values()) > 5000, got


@pytest.mark.parametrize("crs", [None, "EPSG:4326"])
@pytest.mark.parametrize("bbox", [*REGIONS.values(), (5.99, -0.06, 6.01, 0.06)])
def test_strips_of_a_region_equal_one_read(
    store: TesseraStore, bbox: tuple[float, float, float, float], crs: str | None
) -> None:
    """``rows=`` reads a strip pixel for pixel as the whole region holds it (seams included)."""
    whole = store.region(bbox, 2024, crs=crs, dequantise=False)
    h = whole.sizes["y"]
    cuts = sorted({0, 1, 2, h // 4, h // 4 + 1, h // 2, h - 1, h})
    parts = [store.region(bbox, 2024, crs=crs, dequantise=False, rows=(r0, r1))
             for r0, r1 in itertools.pairwise(cuts)]  # fmt: skip
    for name in ("embeddings", "scales", "y"):
        joined = np.concatenate([p[name].values for p in parts])
        np.testing.assert_array_equal(joined, whole[name].values)
    assert all(p.attrs["proj:code"] == whole.attrs["proj:code"] for p in parts)
