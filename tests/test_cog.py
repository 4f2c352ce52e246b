"""Region files GIS tools take: Cloud-Optimised GeoTIFFs (float and raw), Zarr and NetCDF.

Each file is opened with rasterio / rioxarray / xarray and its values compared
with the region Dataset it was written from (``test_regions`` compares those
with the sources pixel by pixel), and pixels of the output grid's own zone
with ``np.load`` of the tiles. Real 128-band tiles across UTM zones 30 and 31.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr
from pyproj import Transformer

from tessera_vz.cli import main as cli
from tessera_vz.core.geometry import cell_centre, project, tile_grids
from tessera_vz.export import RAW_NODATA, write_region
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.reader.store import TesseraStore, dequantise
from tessera_vz.testing.tiles import make_tree

YEARS = (2024, 2025)
TREE = (-0.15, 52.05, 0.15, 52.15)  # 8 tiles, 4 in zone 30 and 4 in zone 31, 128 bands
CROSS = (-0.05, 52.07, 0.04, 52.12)  # across lon 0; its centre is in zone 30
#: The tree's north-west corner: the invalid-scale patch of its NW tile (no neighbour owns it).
CORNER = (-0.21, 52.17, -0.17, 52.21)
#: About 1,000 x 1,000 pixels on zone 30's lattice, across lon 0.
KILO = (-0.073, 52.055, 0.073, 52.145)
#: Peak memory allowed to `region` writing a 1,000 x 1,000 x 128 COG (the issue's target).
MEMORY_LIMIT = 1.5 * 2**30


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cog-src")
    make_tree(root, bbox=TREE, years=YEARS, bands=128, manifest=False)
    out = tmp_path_factory.mktemp("cog-index")
    assert not run_index(IndexOptions(source=str(root), out=str(out))).failed
    return {"root": root, "out": out}


@pytest.fixture(scope="module")
def store(tree: dict[str, Any]) -> TesseraStore:
    return open_store(str(tree["out"]), allow_local_sources=True)


def region_cli(tree: dict[str, Any], bbox: tuple[float, ...], out: Path, *extra: str) -> int:
    return cli(["region", *map(str, bbox), "--store", str(tree["out"]), "--allow-local-sources",
                "--out", str(out), *extra])  # fmt: skip


def truth(root: Path, year: int, lon: float, lat: float) -> np.ndarray:
    """np.load value of the tile whose cell holds (lon, lat), at the pixel containing it."""
    clon, clat = (float(v) for v in cell_centre(lon, lat))
    name = f"grid_{clon:.2f}_{clat:.2f}"
    base = root / str(year) / name / name
    g = tile_grids(clon, clat)
    e, n = project(lon, lat, int(g.epsg[0]))
    r, c = int(np.floor((g.top[0] - float(n)) / 10)), int(np.floor((float(e) - g.left[0]) / 10))
    emb = np.asarray(np.load(f"{base}.npy", mmap_mode="r")[r, c])
    scale = np.load(f"{base}_scales.npy", mmap_mode="r")[r, c]
    return dequantise(emb[None], np.array([scale]))[0]


def test_cog_across_two_zones(
    tree: dict[str, Any], store: TesseraStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cross.tif"
    assert region_cli(tree, CROSS, out, "--year", "2024", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["files"] == [str(out)] and doc["zones"] == [30, 31]
    reg = store.region(CROSS, 2024)
    with rasterio.open(out) as f:
        assert f.driver == "GTiff" and f.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert f.profile["tiled"] and f.block_shapes[0] == (256, 256)
        assert f.compression.name == "deflate" and f.dtypes[0] == "float32"
        assert f.count == 128 and f.descriptions == tuple(f"b{b:03d}" for b in range(128))
        assert np.isnan(f.nodata)
        assert f.crs.to_epsg() == 32630 and f.transform.almost_equals(reg.rio.transform())
        tags = f.tags()
        assert (
            tags["tessera_versions"]
            == reg.attrs["tessera:versions"]
            == "utm30/2024-v1 utm31/2024-v1"
        )
    cog = rioxarray.open_rasterio(out)
    values = reg.embeddings.transpose("band", "y", "x").values
    np.testing.assert_array_equal(cog.values, values)
    # Both zones hold data (zone 31's tiles fill the east part), and no seam of NaN.
    east = reg.x.values > project(0.0, 52.1, 32630)[0]
    assert np.isfinite(values[:, :, east]).any() and np.isfinite(values[:, :, ~east]).any()
    # Pixels of the grid's own zone (30, west of lon 0) are the sources' own pixels.
    to_lonlat = Transformer.from_crs(32630, 4326, always_xy=True)
    rng = np.random.default_rng(7)
    west_cols = np.flatnonzero(reg.x.values < project(-0.001, 52.1, 32630)[0])
    for r, c in zip(rng.integers(0, reg.sizes["y"], 40), rng.choice(west_cols, 40), strict=True):
        lon, lat = to_lonlat.transform(reg.x.values[c], reg.y.values[r])
        np.testing.assert_array_equal(cog.values[:, r, c], truth(tree["root"], 2024, lon, lat))


def test_cog_in_epsg4326(tree: dict[str, Any], store: TesseraStore, tmp_path: Path) -> None:
    out = tmp_path / "geo.tif"
    assert region_cli(tree, CROSS, out, "--year", "2024", "--crs", "EPSG:4326") == 0
    reg = store.region(CROSS, 2024, crs="EPSG:4326")
    with rasterio.open(out) as f:
        assert f.crs.to_epsg() == 4326 and f.transform.almost_equals(reg.rio.transform())
        assert f.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    cog = rioxarray.open_rasterio(out)
    np.testing.assert_array_equal(cog.values, reg.embeddings.transpose("band", "y", "x").values)
    assert np.isfinite(cog.values).all()  # the tree covers the bbox: no NaN anywhere


@pytest.mark.parametrize("bbox", [CROSS, CORNER], ids=["cross", "corner"])
def test_raw_cog_keeps_the_scales(
    tree: dict[str, Any], store: TesseraStore, tmp_path: Path, bbox: tuple[float, ...]
) -> None:
    out = tmp_path / "raw.tif"
    assert region_cli(tree, bbox, out, "--year", "2024", "--raw") == 0
    raw = store.region(bbox, 2024, dequantise=False)
    reg = store.region(bbox, 2024)
    with rasterio.open(out) as f, rasterio.open(tmp_path / "raw_scales.tif") as s:
        assert f.dtypes[0] == "int8" and f.nodata == RAW_NODATA and f.count == 128
        assert s.dtypes[0] == "float32" and s.count == 1 and s.descriptions == ("scale",)
        assert f.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert s.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and s.crs == f.crs
        emb, scales = f.read(), s.read(1)
    np.testing.assert_array_equal(scales, raw.scales.values)
    ok = np.isfinite(reg.embeddings.values).any(axis=-1)
    want = raw.embeddings.transpose("band", "y", "x").values
    np.testing.assert_array_equal(emb[:, ok], want[:, ok])
    assert (emb[:, ~ok] == RAW_NODATA).all()
    assert (~ok).any() == (bbox == CORNER)  # the tree's NW tile's invalid-scale patch
    got = dequantise(np.moveaxis(emb, 0, -1), scales)
    np.testing.assert_array_equal(got, reg.embeddings.values)
    # The README's recipe gives the float file's values.
    r, sc = rioxarray.open_rasterio(out), rioxarray.open_rasterio(tmp_path / "raw_scales.tif")
    values = r.where(r != -128) * sc.squeeze("band", drop=True)
    np.testing.assert_array_equal(values.values, reg.embeddings.transpose("band", "y", "x").values)


@pytest.mark.parametrize("suffix", ["zarr", "nc"])
def test_zarr_and_netcdf_keep_years_and_crs(
    tree: dict[str, Any], store: TesseraStore, tmp_path: Path, suffix: str
) -> None:
    bbox = (-0.01, 52.09, 0.01, 52.1)
    out, raw_out = tmp_path / f"r.{suffix}", tmp_path / f"raw.{suffix}"
    assert region_cli(tree, bbox, out, "--year", "2024,2025") == 0
    assert region_cli(tree, bbox, raw_out, "--year", "2024,2025", "--raw") == 0
    reg = store.region(bbox, list(YEARS))
    raw = store.region(bbox, list(YEARS), dequantise=False)
    opened = xr.open_dataset(out, decode_coords="all")
    assert opened.rio.crs == reg.rio.crs and opened.rio.crs.to_epsg() == 32631
    assert opened.rio.transform().almost_equals(reg.rio.transform())
    assert opened.embeddings.dtype == np.float32 and opened.sizes["time"] == 2
    np.testing.assert_array_equal(opened.embeddings.values, reg.embeddings.values)
    r = xr.open_dataset(raw_out, decode_coords="all")
    np.testing.assert_array_equal(r.embeddings.values, raw.embeddings.values)
    np.testing.assert_array_equal(r.scales.values, raw.scales.values)


def test_write_region_takes_either_dataset(store: TesseraStore, tmp_path: Path) -> None:
    """The viewer's dequantised Dataset and the CLI's raw one write the same COG."""
    bbox = (-0.01, 52.09, 0.01, 52.1)
    write_region(store.region(bbox, 2024), tmp_path / "a.tif")
    write_region(store.region(bbox, 2024, dequantise=False), tmp_path / "b.tif")
    a, b = rioxarray.open_rasterio(tmp_path / "a.tif"), rioxarray.open_rasterio(tmp_path / "b.tif")
    np.testing.assert_array_equal(a.values, b.values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]  # no temporaries


def test_a_kilo_region_cog_stays_under_the_memory_target(
    tree: dict[str, Any], store: TesseraStore, tmp_path: Path
) -> None:
    """1,000 x 1,000 x 128 across two zones: peak RSS of the whole command < 1.5 GiB."""
    out = tmp_path / "kilo.tif"
    measure = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); "
               "sys.exit(done.returncode)")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", measure, sys.executable, "-m", "tessera_vz.cli", "region",
         *map(str, KILO), "--year", "2024", "--store", str(tree["out"]),
         "--allow-local-sources", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.split()[-1])
    with rasterio.open(out) as f:
        assert f.width >= 1000 and f.height >= 1000 and f.count == 128
        assert f.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        window = f.read(window=((f.height - 300, f.height), (f.width - 300, f.width)))
    assert peak < MEMORY_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
    reg = store.region(KILO, 2024)
    want = reg.embeddings.values[-300:, -300:].transpose(2, 0, 1)
    np.testing.assert_array_equal(window, want)
