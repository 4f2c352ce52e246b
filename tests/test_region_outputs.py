"""What a new user meets writing regions: compression, consolidated Zarr, the southern CRS,
year order, existing outputs, progress, and a region given by a polygon file.

Values are compared with ``np.load`` of the source tiles at the pixel holding
each output pixel's centre (``truth``, from the tile geometry of the design
brief), and the polygon mask with geopandas' own ``within`` in the polygon's CRS.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rioxarray
import shapely
import xarray as xr
from pyproj import Transformer

from tessera_vz.cli import main as cli
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.reader.store import TesseraStore
from tessera_vz.testing.tiles import make_tree
from tests.test_cog import truth

BANDS = 8
YEARS = (2024, 2025)
NORTH = (0.02, 52.06, 0.08, 52.12)  # zone 31, 4 tiles
SOUTH = (0.02, -45.15, 0.08, -45.05)  # zone 31, wholly south of the equator
#: A field in British National Grid (EPSG:27700) inside NORTH, with a hole.
FIELD_BNG = (
    "POLYGON ((539300 243400, 541900 243300, 541700 247600, 539500 247000, 539300 243400), "
    "(540000 244800, 541000 244800, 541000 245800, 540000 245800, 540000 244800))"
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("regions-src")
    for bbox in ((0.0, 52.0, 0.1, 52.2), (0.0, -45.2, 0.1, -45.0)):
        make_tree(root, bbox=bbox, years=YEARS, bands=BANDS, manifest=False, invalid_patch=False)
    out = tmp_path_factory.mktemp("regions-index")
    assert not run_index(IndexOptions(source=str(root), out=str(out))).failed
    return {"root": root, "out": out}


@pytest.fixture(scope="module")
def store(tree: dict[str, Any]) -> TesseraStore:
    return open_store(str(tree["out"]), allow_local_sources=True)


def region(tree: dict[str, Any], *argv: str) -> int:
    return cli(["region", *argv, "--store", str(tree["out"]), "--allow-local-sources"])


def bbox_args(bbox: tuple[float, ...]) -> list[str]:
    return [str(v) for v in bbox]


def check_truth(da: xr.DataArray, root: Path, year: int, epsg: int, n: int = 150) -> int:
    """``n`` random pixels (y, x, band) equal np.load at their centres, or NaN where no data."""
    rng = np.random.default_rng(year)
    to_lonlat = Transformer.from_crs(epsg, 4326, always_xy=True)
    values = da.transpose("y", "x", "band").values
    checked = 0
    for r, c in zip(rng.integers(0, da.sizes["y"], n), rng.integers(0, da.sizes["x"], n),
                    strict=True):  # fmt: skip
        if np.isnan(values[r, c]).all():
            continue
        lon, lat = to_lonlat.transform(float(da.x[c]), float(da.y[r]))
        np.testing.assert_array_equal(values[r, c], truth(root, year, lon, lat))
        checked += 1
    return checked


def test_netcdf_is_compressed_and_years_ascend(
    tree: dict[str, Any], store: TesseraStore, tmp_path: Path
) -> None:
    out = tmp_path / "r.nc"
    assert region(tree, *bbox_args(NORTH), "--year", "2025,2024", "--out", str(out)) == 0
    ds = xr.open_dataset(out, engine="h5netcdf", decode_coords="all")
    assert ds.time.values.tolist() == [2024, 2025]  # ascending, whatever the order asked
    enc = ds.embeddings.encoding
    assert enc["zlib"] and enc["shuffle"] and enc["chunksizes"][-1] == BANDS
    size = out.stat().st_size
    assert size < ds.embeddings.nbytes / 2, (size, ds.embeddings.nbytes)
    want = store.region(NORTH, [2025, 2024])
    assert want.time.values.tolist() == [2024, 2025]
    np.testing.assert_array_equal(ds.embeddings.values, want.embeddings.values)
    for i, year in enumerate(YEARS):
        assert check_truth(ds.embeddings.isel(time=i), tree["root"], year, 32631) > 100


def test_zarr_has_consolidated_metadata(
    tree: dict[str, Any], store: TesseraStore, tmp_path: Path
) -> None:
    out = tmp_path / "r.zarr"
    assert region(tree, *bbox_args(NORTH), "--year", "2025,2024", "--out", str(out)) == 0
    assert "consolidated_metadata" in json.loads((out / "zarr.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "consolidated metadata not found" warning
        ds = xr.open_zarr(out)
        assert ds.time.values.tolist() == [2024, 2025]
        got = ds.embeddings.values
    np.testing.assert_array_equal(got, store.region(NORTH, list(YEARS)).embeddings.values)


def test_southern_bbox_is_in_the_southern_utm_crs(tree: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "south.tif"
    assert region(tree, *bbox_args(SOUTH), "--year", "2024", "--out", str(out)) == 0
    da = rioxarray.open_rasterio(out).rename(band="band")
    assert da.rio.crs.to_epsg() == 32731
    assert (da.y.values > 4_000_000).all()  # northings from the southern false origin
    assert check_truth(da, tree["root"], 2024, 32731) > 100


def test_existing_output_needs_overwrite(
    tree: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.tif"
    assert region(tree, *bbox_args(NORTH), "--year", "2024", "--out", str(out)) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert region(tree, *bbox_args(NORTH), "--year", "2025", "--out", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists; pass --overwrite" in err[0]
    assert out.read_bytes() == before
    assert region(tree, *bbox_args(NORTH), "--year", "2025", "--out", str(out),
                  "--overwrite") == 0  # fmt: skip
    da = rioxarray.open_rasterio(out)
    assert check_truth(da, tree["root"], 2025, 32631) > 100


@pytest.mark.parametrize(("suffix", "crs"), [("gpkg", 27700), ("geojson", 4326), ("shp", 32631)])
def test_region_file_masks_outside_the_polygon(
    tree: dict[str, Any], store: TesseraStore, tmp_path: Path, suffix: str, crs: int
) -> None:
    """A field (with a hole) drawn in British National Grid, saved in three CRSs and formats."""
    field = gpd.GeoSeries.from_wkt([FIELD_BNG], crs=27700).to_crs(crs)
    area = tmp_path / f"field.{suffix}"
    gpd.GeoDataFrame({"name": ["field"]}, geometry=field).to_file(area)
    out = tmp_path / "field.tif"
    assert region(tree, "--region-file", str(area), "--year", "2024", "--out", str(out)) == 0
    da = rioxarray.open_rasterio(out, masked=False)
    assert np.isnan(da.rio.nodata)
    # Which pixel centres lie in the field, by geopandas in the field's own CRS.
    yy, xx = np.meshgrid(da.y.values, da.x.values, indexing="ij")
    centres = gpd.GeoSeries(gpd.points_from_xy(xx.ravel(), yy.ravel()), crs=da.rio.crs)
    inside = centres.to_crs(crs).within(field.iloc[0]).to_numpy().reshape(yy.shape)
    assert 0.3 < inside.mean() < 0.95  # a field with a hole, not its box
    values = da.transpose("y", "x", "band").values
    assert np.isnan(values[~inside]).all()
    assert not np.isnan(values[inside]).any()  # every tile is there
    # Inside, the pixels of the bbox region, which equal np.load.
    box = store.region(tuple(field.to_crs(4326).total_bounds), 2024)
    np.testing.assert_array_equal(values[inside], box.embeddings.values[inside])
    masked = da.where(xr.DataArray(inside, dims=("y", "x")))
    assert check_truth(masked, tree["root"], 2024, 32631, n=400) > 100
    # The same through the API, raw: scales NaN outside, so a raw COG's nodata there.
    raw = store.region(None, 2024, area=field.iloc[0], area_crs=f"EPSG:{crs}", dequantise=False)
    assert np.isnan(raw.scales.values[~inside]).all() and "Polygon" in raw.attrs["tessera:area"]
    raw_out = tmp_path / "raw.tif"
    assert region(tree, "--region-file", str(area), "--year", "2024", "--out", str(raw_out),
                  "--raw") == 0  # fmt: skip
    emb = rioxarray.open_rasterio(raw_out).transpose("y", "x", "band").values
    assert (emb[~inside] == -128).all() and (emb[inside] != -128).any()


def test_region_file_polygon_api_equals_a_shapely_polygon(store: TesseraStore) -> None:
    poly = shapely.box(*NORTH)
    a = store.region(None, 2024, area=poly)
    b = store.region(NORTH, 2024)
    np.testing.assert_array_equal(a.embeddings.values[~np.isnan(a.embeddings.values)],
                                  b.embeddings.values[~np.isnan(a.embeddings.values)])  # fmt: skip
    assert a.sizes == b.sizes


def test_progress_on_regions_and_verify(
    tree: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.zarr"
    assert region(tree, *bbox_args(NORTH), "--year", "2024,2025", "--out", str(out),
                  "--progress") == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "reading" in err and "2/2" in err and "writing r.zarr" in err
    assert cli(["verify", str(tree["out"]), "--allow-local-sources", "--progress"]) == 0
    err = capsys.readouterr().err
    assert "verifying" in err and "healthy" in err
