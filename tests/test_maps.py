"""Maps (classes, similarity, change) against truths computed from the tiles' known content.

The tree straddles lon 0 (UTM zones 30/31) and lat 52.1 (two rows of
cells), two years, served by nginx over HTTPS. Its embeddings are written
with chosen content (``np.load(..., mmap_mode="r+")``, headers untouched):
random int8 vectors, a tenth of the pixels set to one reference vector
``REF`` (so their embeddings are proportional: cosine 1 exactly), and 2 %
of the scales invalid (no data). Every expected value comes from
``np.load`` of the sources at the pixel the documented region rule picks
(``test_regions.by_rule``), never from the reader: labels are the sign of
band 0 (a rule a correct classifier learns, and a misplaced strip breaks,
as labels are independent from pixel to pixel), similarity is the float64
cosine to the reference, change the cosine distance between the years.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
from pyproj import Transformer

from tessera_vz.cli import main as cli
from tessera_vz.core.dataset import DatasetMismatchError
from tessera_vz.maps import Area, change, fit, predict, similar, training_set
from tessera_vz.maps.model import NODATA, load_model
from tessera_vz.reader import open_store
from tessera_vz.reader.store import TesseraStore, dequantise
from tessera_vz.testing.tiles import TileSpec, make_tree
from tessera_vz.testing.tls import TestCA

from .conftest import indexed_over_https
from .test_regions import BANDS, Tiles, by_rule

YEARS = (2023, 2024)
#: Four cells a year: lon -0.1..0.1 (zones 30 and 31) x lat 52.0..52.2.
CELLS = [(lo, la) for lo in (-0.05, 0.05) for la in (52.05, 52.15)]
#: The mapped area: across lon 0 and the cell edge at 52.1 N (about 480 x 560 pixels).
AREA = (-0.035, 52.075, 0.03, 52.125)
#: A smaller area for the EPSG:4326 maps.
SMALL = (-0.012, 52.095, 0.01, 52.108)
#: The reference vector a tenth of the pixels hold (int8).
REF = np.array([60, -40, 25, 90], np.int8)
assert REF.size == BANDS


class Loaded(Tiles):
    """The tiles of one year, valued from ``np.load`` of their files (not the generator)."""

    def __init__(self, specs: list[TileSpec], year: int, root: Path) -> None:
        super().__init__(specs, year)
        self.root = root

    def values(self, spec: TileSpec, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        emb = np.load(self.root / spec.emb_path, mmap_mode="r")[r, c]
        scale = np.load(self.root / spec.scales_path, mmap_mode="r")[r, c]
        return dequantise(np.asarray(emb), np.asarray(scale))


def write_content(root: Path, spec: TileSpec) -> None:
    """Random int8 embeddings, REF at a tenth of the pixels, 2 % invalid scales (seeded)."""
    rng = np.random.default_rng([spec.year, round(spec.lon * 100) + 1000, round(spec.lat * 100)])
    emb = np.load(root / spec.emb_path, mmap_mode="r+")
    q = rng.integers(-100, 101, size=emb.shape, dtype=np.int16).astype(np.int8)
    q[rng.random(emb.shape[:2]) < 0.1] = REF
    emb[:] = q
    emb.flush()
    scales = np.load(root / spec.scales_path, mmap_mode="r+")
    scales[rng.random(scales.shape) < 0.02] = 0.0
    scales.flush()
    del emb, scales


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, https: TestCA) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("maps-src")
    out = tmp_path_factory.mktemp("maps-index")
    specs = make_tree(root, centres=CELLS, years=YEARS, bands=BANDS, manifest=False,
                      invalid_patch=False)  # fmt: skip
    for spec in specs:
        write_content(root, spec)
    with indexed_over_https(root, specs, https, out) as url:
        yield {"root": root, "out": out, "url": url, "specs": specs}


@pytest.fixture(scope="module")
def store(world: dict[str, Any]) -> TesseraStore:
    return open_store(str(world["out"]), allowed_sources=[world["url"]])


def truth(world: dict[str, Any], ds: xr.Dataset, year: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values (y, x, bands), known (y, x))`` of the map's pixels, from ``np.load``."""
    xx, yy = np.meshgrid(ds["x"].values, ds["y"].values)
    crs = ds["spatial_ref"].attrs["crs_wkt"]
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xx, yy)
    values, known = by_rule(Loaded(world["specs"], year, world["root"]), lon.ravel(), lat.ravel())
    return values.reshape(*xx.shape, BANDS), known.reshape(xx.shape)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def labelled_points(world: dict[str, Any], store: TesseraStore, n: int, seed: int) -> Any:
    """``n`` random labelled pixel centres of AREA (lon, lat, label = sign of band 0)."""
    import pyarrow as pa

    full = store.region(AREA, 2024)
    values, known = truth(world, full, 2024)
    ok = np.flatnonzero((known & ~np.isnan(values).any(-1)).ravel())
    pick = np.random.default_rng(seed).choice(ok, n, replace=False)
    r, c = np.divmod(pick, full.sizes["x"])
    crs = full["spatial_ref"].attrs["crs_wkt"]
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(
        full["x"].values[c], full["y"].values[r]
    )
    b0 = values.reshape(-1, BANDS)[pick, 0]
    return pa.table({"lon": lon, "lat": lat, "label": np.where(b0 > 0, "pos", "neg")})


# -- strips ------------------------------------------------------------------


@pytest.mark.parametrize("crs", [None, "EPSG:4326"])
def test_region_strips_equal_one_read(store: TesseraStore, crs: str | None) -> None:
    whole = store.region(AREA if crs is None else SMALL, 2024, crs=crs)
    h = whole.sizes["y"]
    cuts = [0, 1, 7, h // 3, h // 3 + 1, h - 2, h]
    for raw in (False, True):
        ref = whole if not raw else store.region(AREA if crs is None else SMALL, 2024, crs=crs,
                                                 dequantise=False)  # fmt: skip
        for r0, r1 in itertools.pairwise(cuts):
            part = store.region(AREA if crs is None else SMALL, 2024, crs=crs, rows=(r0, r1),
                                dequantise=not raw)  # fmt: skip
            np.testing.assert_array_equal(part["embeddings"].values,
                                          ref["embeddings"].values[r0:r1])  # fmt: skip
            np.testing.assert_array_equal(part["y"].values, ref["y"].values[r0:r1])
            np.testing.assert_array_equal(part["x"].values, ref["x"].values)
            if raw:
                np.testing.assert_array_equal(part["scales"].values, ref["scales"].values[r0:r1])
    assert whole.attrs["tessera:zones"] == [30, 31]


def test_rows_out_of_the_grid_are_refused(store: TesseraStore) -> None:
    with pytest.raises(ValueError, match="rows"):
        store.region(AREA, 2024, rows=(5, 5))


# -- change and similarity ---------------------------------------------------


@pytest.mark.parametrize("crs", [None, "EPSG:4326"])
def test_change_is_the_cosine_distance_of_the_sources(
    world: dict[str, Any], store: TesseraStore, crs: str | None
) -> None:
    area = Area(AREA if crs is None else SMALL, crs=crs)
    ds = change(store, area, YEARS, strip_pixels=20_000)
    a, known_a = truth(world, ds, 2023)
    b, known_b = truth(world, ds, 2024)
    known = known_a & known_b
    want = 1.0 - cosine(a, b)
    got = ds["change"].values
    assert got.dtype == np.float32 and known.mean() > 0.95
    nodata = np.isnan(a).any(-1) | np.isnan(b).any(-1)
    np.testing.assert_array_equal(np.isnan(got)[known], nodata[known])
    np.testing.assert_allclose(got[known & ~nodata], want[known & ~nodata], atol=2e-7)
    assert 0.01 < nodata[known].mean() < 0.1  # both years' invalid scales show
    assert ds.attrs["tessera:zones"] == [30, 31] and "tessera:dataset" in ds.attrs
    if crs is None:  # strips or one read: the same map
        once = change(store, area, YEARS, strip_pixels=10**9)
        np.testing.assert_array_equal(once["change"].values, got)
        region = store.region(AREA, 2024)
        np.testing.assert_array_equal(ds["x"].values, region["x"].values)
        np.testing.assert_array_equal(ds["y"].values, region["y"].values)
        assert ds["spatial_ref"].attrs == region["spatial_ref"].attrs


@pytest.mark.parametrize("crs", [None, "EPSG:4326"])
def test_similarity_is_one_exactly_where_proportional(
    world: dict[str, Any], store: TesseraStore, crs: str | None
) -> None:
    area = Area(AREA if crs is None else SMALL, crs=crs)
    grid_ds = store.region(area.bbox, 2024, crs=crs)
    values, known = truth(world, grid_ds, 2024)
    valid = known & ~np.isnan(values).any(-1)
    # The reference: a pixel holding REF (its embedding read by --lon/--lat in the CLI test).
    ref_cos = cosine(values, REF.astype(np.float64))
    r, c = np.argwhere(valid & (1 - ref_cos < 1e-12))[0]
    reference = values[r, c][None]
    ds, matches = similar(store, area, 2024, reference, top=25, strip_pixels=15_000)
    got = ds["similarity"].values
    want = cosine(values, reference[0])
    proportional = valid & (1 - want < 1e-12)
    assert proportional.sum() > 0.05 * valid.sum()
    assert (got[proportional] == 1.0).all()
    assert (got[valid & ~proportional] < 1.0).all()
    np.testing.assert_allclose(got[valid], want[valid], atol=2e-7)
    np.testing.assert_array_equal(np.isnan(got)[known], ~valid[known])
    # the top matches are proportional pixels, in grid order among equals
    assert matches.num_rows == 25
    rows, cols = matches.column("row").to_numpy(), matches.column("col").to_numpy()
    assert (got[rows, cols] == 1.0).all()
    assert list(np.ravel_multi_index((rows, cols), got.shape)) == sorted(
        np.ravel_multi_index((rows, cols), got.shape)
    )
    assert b"geo" in matches.schema.metadata
    # mean over two references: the mean of the two cosines
    other = values[tuple(np.argwhere(valid & (1 - ref_cos > 0.5))[0])][None]
    mean, _ = similar(store, area, 2024, np.vstack([reference, other]), how="mean")
    both = (want + cosine(values, other[0])) / 2
    np.testing.assert_allclose(mean["similarity"].values[valid], both[valid], atol=2e-7)


# -- classification ------------------------------------------------------------


@pytest.fixture(scope="module")
def training(world: dict[str, Any], store: TesseraStore) -> Any:
    return labelled_points(world, store, 1000, seed=3)


@pytest.mark.parametrize("kind", ["logistic", "forest"])
def test_class_map_reaches_the_rule(
    world: dict[str, Any], store: TesseraStore, training: Any, kind: str
) -> None:
    x, labels, counts = training_set(store, training, 2024, "label")
    assert counts == {"ok": 1000} and x.shape == (1000, BANDS)
    model = fit(x, labels, kind, store.dataset(), label="label", year=2024)
    assert model.classes == ["neg", "pos"] and model.report["folds"] == 5
    assert model.report["accuracy"] >= 0.95
    assert np.asarray(model.report["confusion"]).sum() == 1000
    ds = predict(store, Area(AREA), 2024, model, probabilities=True, strip_pixels=30_000)
    values, known = truth(world, ds, 2024)
    valid = known & ~np.isnan(values).any(-1)
    classes = ds["classes"].values
    assert classes.dtype == np.uint8
    assert (classes[known & ~valid] == NODATA).all() and (classes[valid] != NODATA).all()
    want = (values[..., 0] > 0).astype(np.uint8)  # "pos" is code 1
    accuracy = (classes[valid] == want[valid]).mean()
    assert accuracy >= 0.95, accuracy
    probs = ds["probabilities"].values
    assert probs.shape == (*classes.shape, 2)
    np.testing.assert_array_equal(np.argmax(probs[valid], axis=-1), classes[valid])
    once = predict(store, Area(AREA), 2024, model, strip_pixels=10**9)
    np.testing.assert_array_equal(once["classes"].values, classes)


def test_a_model_of_another_dataset_is_refused(store: TesseraStore, training: Any) -> None:
    x, labels, _ = training_set(store, training, 2024, "label")
    other = dict(store.dataset(), **{"tessera:dataset": "9.9/elsewhere"})
    model = fit(x, labels, "logistic", other)
    with pytest.raises(DatasetMismatchError, match=r"9\.9/elsewhere"):
        predict(store, Area(AREA), 2024, model)


# -- the command line ----------------------------------------------------------


def run(world: dict[str, Any], *argv: str) -> int:
    return cli([*argv, "--store", str(world["out"]), "--allow-source", world["url"]])


def test_classify_command_writes_a_cog_and_class_table(
    world: dict[str, Any], store: TesseraStore, training: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import pyarrow.csv as pacsv

    pacsv.write_csv(training, tmp_path / "train.csv")
    out, model_file = tmp_path / "classes.tif", tmp_path / "m.joblib"
    bbox = [str(v) for v in AREA]
    assert run(world, "classify", str(tmp_path / "train.csv"), "--label", "label", "--bbox", *bbox,
               "--year", "2024", "--out", str(out), "--model", "logistic", "--model-out",
               str(model_file), "--probabilities", "--json") == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["accuracy"] >= 0.95 and doc["classes"] == ["neg", "pos"]
    assert len(doc["confusion"]) == 2 and doc["samples"] == 1000
    with rasterio.open(out) as f:
        assert f.dtypes[0] == "uint8" and f.nodata == NODATA and f.count == 1
        tags = f.tags()
        assert json.loads(tags["tessera_classes"]) == {"0": "neg", "1": "pos"}
        assert tags["TESSERA_CLASS_1"] == "pos" and "TESSERA_DATASET_VERSION" in tags
        band = f.read(1)
    ds = predict(store, Area(AREA), 2024, load_model(model_file))
    np.testing.assert_array_equal(band, ds["classes"].values)
    with (tmp_path / "classes_classes.csv").open() as f:
        assert list(csv.DictReader(f)) == [
            {"code": "0", "name": "neg"},
            {"code": "1", "name": "pos"},
        ]
    assert json.loads((tmp_path / "classes_classes.json").read_text())["nodata"] == NODATA
    with rasterio.open(tmp_path / "classes_probabilities.tif") as f:
        assert f.count == 2 and f.descriptions == ("p_neg", "p_pos")
    # the saved model maps another area without training
    again = tmp_path / "again.tif"
    assert run(world, "classify", "--model-in", str(model_file), "--bbox", *map(str, SMALL),
               "--year", "2024", "--out", str(again), "--crs", "EPSG:4326") == 0  # fmt: skip
    with rasterio.open(again) as f:
        assert f.crs.to_epsg() == 4326 and f.dtypes[0] == "uint8"


def test_map_commands_refuse_before_reading(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bbox = [str(v) for v in AREA]
    out = str(tmp_path / "x.tif")
    m = ["--bbox", *bbox, "--year", "2024", "--out", out]
    place = ["similar", "--lon", "0", "--lat", "52.1"]
    cases = [
        (["classify", *m], "TRAINING"),
        (["classify", str(tmp_path / "none.csv"), "--label", "l", *m], "does not exist"),
        ([*place, *m[:-1], str(tmp_path / "x.png")], ".tif"),
        (["similar", "--lon", "0", *m], "--lat"),
        ([*place, *m, "--top", "5"], "--matches"),
        (["change", "--years", "2024", *m[:5], *m[-2:]], "two years"),
        (["change", "--years", "2022,2024", *m[:5], *m[-2:]], "2022"),
    ]
    for argv, words in cases:
        assert run(world, *argv) == 2, argv
        assert words in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_similar_and_change_commands(
    world: dict[str, Any], store: TesseraStore, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    bbox = [str(v) for v in SMALL]
    region = store.region(SMALL, 2024)
    values, known = truth(world, region, 2024)
    valid = known & ~np.isnan(values).any(-1)
    r, c = np.argwhere(valid & (1 - cosine(values, REF.astype(float)) < 1e-12))[0]
    crs = region["spatial_ref"].attrs["crs_wkt"]
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(
        region["x"].values[c], region["y"].values[r]
    )
    sim, matches = tmp_path / "sim.tif", tmp_path / "m.parquet"
    assert run(world, "similar", "--lon", str(lon), "--lat", str(lat), "--bbox", *bbox,
               "--year", "2024", "--out", str(sim), "--top", "10", "--matches", str(matches),
               "--json") == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["references"] == 1 and doc["matches"] == 10
    with rasterio.open(sim) as f:
        band = f.read(1)
    want = cosine(values, values[r, c])
    np.testing.assert_allclose(band[valid], want[valid], atol=2e-7)
    assert band[r, c] == 1.0
    import geopandas

    found = geopandas.read_parquet(matches)
    assert len(found) == 10 and (found["similarity"] == 1.0).all()
    assert found.crs.to_authority() == ("OGC", "CRS84")  # lon/lat, as points tables
    chg = tmp_path / "chg.tif"
    assert run(world, "change", "--years", "2023,2024", "--bbox", *bbox, "--out", str(chg)) == 0
    a, _ = truth(world, region, 2023)
    with rasterio.open(chg) as f:
        band = f.read(1)
        assert f.crs.to_epsg() == 32630
    both = known & ~np.isnan(a).any(-1) & valid
    np.testing.assert_allclose(band[both], (1 - cosine(a, values))[both], atol=2e-7)


def test_a_polygon_area_has_no_data_outside(world: dict[str, Any], store: TesseraStore) -> None:
    """A map of a polygon (``--region-file``): its box's grid, NaN outside it, as ``region``."""
    import shapely

    w, s, e, n = AREA
    triangle = shapely.Polygon([(w, s), (e, s), (w, n)])
    ds = change(store, Area(polygon=triangle), YEARS, strip_pixels=20_000)
    region = store.region(None, 2024, area=triangle)
    got = ds["change"].values
    outside = np.isnan(region["embeddings"].values).all(-1)
    assert np.isnan(got[outside]).all() and outside.mean() > 0.3
    box = change(store, Area(AREA), YEARS)
    inside = ~outside & ~np.isnan(got)
    np.testing.assert_array_equal(got[inside], box["change"].values[inside])


def test_outputs_are_not_replaced_without_overwrite(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c.tif"
    argv = ["change", "--years", "2023,2024", "--bbox", *map(str, SMALL), "--out", str(out)]
    assert run(world, *argv) == 0
    first = out.stat().st_mtime_ns
    assert run(world, *argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == first
    assert run(world, *argv, "--overwrite") == 0


def test_rgb_is_the_areas_pca_stretched(
    world: dict[str, Any], store: TesseraStore, tmp_path: Path
) -> None:
    """Three leading components of the whole area's embeddings, 2-98 % onto 1..255; 0: no data."""
    from PIL import Image

    from tessera_vz.maps import rgb

    ds = rgb(store, Area(AREA), 2024, strip_pixels=25_000)
    values = store.region(AREA, 2024)["embeddings"].values.astype(np.float64)
    ok = ~np.isnan(values).any(-1)
    v = values[ok]
    eigval, eigvec = np.linalg.eigh(np.cov(v, rowvar=False, bias=True))
    axes = eigvec[:, ::-1][:, :3]
    axes *= np.sign(axes[np.abs(axes).argmax(0), range(3)])
    pcs = (v - v.mean(0)) @ axes
    lo, hi = np.percentile(pcs, [2, 98], axis=0)
    want = np.clip(np.rint(1 + 254 * (pcs - lo) / (hi - lo)), 1, 255)
    got = ds["rgb"].values
    assert got.dtype == np.uint8 and (got[~ok] == 0).all()
    assert np.abs(got[ok].astype(int) - want).max() <= 1
    assert (got[ok] == want).mean() > 0.99
    shares = eigval[::-1][:3] / eigval.sum()
    np.testing.assert_allclose(ds.attrs["tessera:pca_explained"], shares, atol=1e-5)
    once = rgb(store, Area(AREA), 2024, strip_pixels=10**9)["rgb"].values
    assert np.abs(once.astype(int) - got).max() <= 1
    out = tmp_path / "pic.png"
    assert run(world, "rgb", "--bbox", *map(str, AREA), "--year", "2024", "--out", str(out)) == 0
    picture = np.asarray(Image.open(out))
    assert picture.shape == (*got.shape[:2], 4)
    np.testing.assert_array_equal(picture[..., 3] == 0, ~ok)
