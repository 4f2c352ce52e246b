"""Polygons as training areas and references: their pixels, their cap, a map learnt from them.

A tree of two cells (lon 0.0..0.1, lat 52.0..52.2, zone 31), served by nginx
over HTTPS, whose embeddings are written with a spatial rule: band 0 is
positive in the western half of every tile (file columns ``< W/2``) and
negative in the eastern half, the other bands random, 2 % of the scales
invalid. Two polygons, one in each half, labelled ``west`` and ``east``, so
a classifier trained on their pixels learns the sign of band 0, and the map
is checked against that sign computed from ``np.load`` of the sources
(``test_maps.truth``). A polygon's pixels are checked against the region
read of the same polygon.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import shapely
from pyproj import Transformer

from tessera_vz.cli import main as cli
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.maps import Area, fit, predict, reference_embeddings, training_set
from tessera_vz.maps.model import NODATA
from tessera_vz.maps.places import place_embeddings, polygon_pixels
from tessera_vz.reader import open_store
from tessera_vz.reader.store import TesseraStore
from tessera_vz.testing.tiles import TileSpec, make_tree
from tessera_vz.testing.tls import TestCA

from .conftest import indexed_over_https
from .test_maps import truth
from .test_regions import BANDS

YEAR = 2024
CELLS = [(0.05, 52.05), (0.05, 52.15)]
#: Western and eastern training polygons (lon/lat), across the cell edge at 52.1 N.
WEST = shapely.Polygon([(0.008, 52.09), (0.03, 52.085), (0.035, 52.112), (0.012, 52.108)])
EAST = shapely.box(0.07, 52.094, 0.09, 52.106)
#: The mapped area: both halves of both cells.
AREA = (0.004, 52.07, 0.096, 52.13)


def write_halves(root: Path, spec: TileSpec) -> None:
    """Band 0 > 0 in the west half of the tile, < 0 in the east; 2 % invalid scales (seeded)."""
    rng = np.random.default_rng([spec.year, round(spec.lat * 100)])
    emb = np.load(root / spec.emb_path, mmap_mode="r+")
    q = rng.integers(-100, 101, size=emb.shape, dtype=np.int16)
    west = np.arange(emb.shape[1]) < emb.shape[1] // 2
    q[..., 0] = np.where(west[None, :], np.abs(q[..., 0]) + 1, -np.abs(q[..., 0]) - 1)
    emb[:] = q.astype(np.int8)
    emb.flush()
    scales = np.load(root / spec.scales_path, mmap_mode="r+")
    scales[rng.random(scales.shape) < 0.02] = 0.0
    scales.flush()
    del emb, scales


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, https: TestCA) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("places-src")
    out = tmp_path_factory.mktemp("places-index")
    specs = make_tree(root, centres=CELLS, years=(YEAR,), bands=BANDS, manifest=False,
                      invalid_patch=False)  # fmt: skip
    for spec in specs:
        write_halves(root, spec)
    with indexed_over_https(root, specs, https, out) as url:
        yield {"root": root, "out": out, "url": url, "specs": specs}


@pytest.fixture(scope="module")
def store(world: dict[str, Any]) -> TesseraStore:
    return open_store(str(world["out"]), allowed_sources=[world["url"]])


def region_pixels(store: TesseraStore, polygon: Any, crs: Any = "EPSG:4326") -> np.ndarray:
    """The valid pixels of ``region`` of the polygon, in grid order."""
    emb = store.region(None, YEAR, area=polygon, area_crs=crs)["embeddings"].values
    flat = emb.reshape(-1, emb.shape[-1])
    return flat[~np.isnan(flat).any(axis=1)]


def test_polygon_pixels_equal_the_region_read(store: TesseraStore) -> None:
    want = region_pixels(store, WEST)
    got, left_out = polygon_pixels(store, WEST, None, YEAR, max_pixels=10**7)
    assert left_out == 0 and want.shape[0] > 30_000  # both cells: the polygon crosses 52.1 N
    np.testing.assert_array_equal(got, want)
    # the same polygon in UTM metres (a GeoDataFrame's CRS): the same pixels
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32631", always_xy=True)
    utm = shapely.transform(WEST, lambda xy: np.column_stack(to_utm.transform(*xy.T)))
    import geopandas as gpd

    frame = gpd.GeoDataFrame({"label": ["w"]}, geometry=[utm], crs="EPSG:32631")
    got_utm = place_embeddings(store, frame, YEAR, max_pixels=10**7)
    np.testing.assert_array_equal(got_utm.values, region_pixels(store, utm, "EPSG:32631"))
    assert got_utm.counts == {"polygons": 1, "polygon pixels": got_utm.values.shape[0],
                              "polygon pixels left out": 0}  # fmt: skip


def test_a_capped_polygon_gives_a_fixed_subset(store: TesseraStore) -> None:
    whole = region_pixels(store, EAST)
    got, left_out = polygon_pixels(store, EAST, None, YEAR, max_pixels=500)
    again, _ = polygon_pixels(store, EAST, None, YEAR, max_pixels=500)
    np.testing.assert_array_equal(got, again)  # drawn with a fixed seed
    assert 470 <= got.shape[0] <= 500  # a few drawn pixels have invalid scales
    assert left_out > 15_000
    # every pixel taken is one of the polygon's, in grid order
    index = {row.tobytes(): k for k, row in enumerate(whole)}
    positions = [index[row.tobytes()] for row in got]
    assert positions == sorted(positions)


def test_points_and_polygons_in_one_table(store: TesseraStore) -> None:
    """Points keep their one pixel each (and their status), polygons give their pixels."""
    geoms = [shapely.Point(0.02, 52.1), EAST, shapely.Point(5.0, 40.0), None]
    table = pa.table({"label": ["a", "b", "c", "d"],
                      "geometry": pa.array(shapely.to_wkb(geoms), pa.binary())})  # fmt: skip
    got = place_embeddings(store, table, YEAR, max_pixels=300, geometry="geometry")
    assert got.counts["ok"] == 1 and got.counts["no tile"] == 1 and got.counts["empty"] == 1
    assert got.counts["polygons"] == 1 and got.counts["polygon pixels"] == got.values.shape[0] - 1
    assert got.rows[0] == 0 and (got.rows[1:] == 1).all()
    np.testing.assert_array_equal(got.values[0], store.point(0.02, 52.1, YEAR))
    # the points reader itself still refuses polygons
    with pytest.raises(ConfigurationError, match="Polygon in row 1"):
        store.sample(table, YEAR, geometry="geometry")


def test_classify_trained_on_two_polygons_reaches_the_rule(
    world: dict[str, Any], store: TesseraStore
) -> None:
    import geopandas as gpd

    frame = gpd.GeoDataFrame({"side": ["west", "east"]}, geometry=[WEST, EAST], crs="EPSG:4326")
    x, labels, counts = training_set(store, frame, YEAR, "side", max_pixels_per_polygon=1500)
    assert counts["polygons"] == 2 and counts["polygon pixels left out"] > 0
    assert set(labels) == {"west", "east"} and 2900 <= x.shape[0] <= 3000
    model = fit(x, labels, "logistic", store.dataset(), label="side", year=YEAR)
    assert model.report["accuracy"] >= 0.95
    ds = predict(store, Area(AREA), YEAR, model)
    values, known = truth(world, ds, YEAR)
    valid = known & ~np.isnan(values).any(-1)
    want = np.where(values[..., 0] > 0, model.classes.index("west"), model.classes.index("east"))
    classes = ds["classes"].values
    assert (classes[known & ~valid] == NODATA).all()
    accuracy = (classes[valid] == want[valid]).mean()
    assert accuracy >= 0.95, accuracy
    assert 0.3 < (want[valid] == model.classes.index("west")).mean() < 0.7  # both sides mapped
    # references: a polygon's pixels are its embeddings
    refs = reference_embeddings(store, frame.iloc[[1]], YEAR, max_pixels_per_polygon=10**7)
    np.testing.assert_array_equal(refs, region_pixels(store, EAST).astype(np.float64))


def test_classify_command_reads_polygons_from_geojson(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    features = [{"type": "Feature", "properties": {"side": side},
                 "geometry": shapely.geometry.mapping(poly)}
                for side, poly in (("west", WEST), ("east", EAST))]  # fmt: skip
    train = tmp_path / "train.geojson"
    train.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    out = tmp_path / "classes.tif"
    argv = ["classify", str(train), "--label", "side", "--bbox", *map(str, AREA),
            "--year", str(YEAR), "--out", str(out), "--model", "logistic",
            "--max-pixels-per-polygon", "400", "--json",
            "--store", str(world["out"]), "--allow-source", world["url"]]  # fmt: skip
    assert cli(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["training"]["polygons"] == 2 and doc["samples"] > 780
    assert doc["accuracy"] >= 0.95 and out.exists()
    assert cli([*argv[:-4], "--overwrite", "--max-pixels-per-polygon", "0", *argv[-4:]]) == 2
    assert "at least 1" in capsys.readouterr().err


# -- the viewer's map endpoints -------------------------------------------------


@pytest.fixture(scope="module")
def base(store: TesseraStore) -> Iterator[str]:
    from tessera_vz.serve import Limits, create_app

    from .test_serve_api import running

    with running(create_app(store, limits=Limits(preview_pixels=400_000))) as url:
        yield url


def post(base: str, path: str, doc: Any, **headers: str) -> tuple[int, Any]:
    """POST ``doc`` as JSON (or bytes as given); the status and the decoded JSON answer."""
    import urllib.error
    import urllib.request

    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    sent = {"Content-Type": "application/json", **headers}
    req = urllib.request.Request(base + path, data=body, method="POST", headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def fetch(base: str, path: str) -> tuple[int, bytes, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(base + path, timeout=60) as r:
            return r.status, r.read(), r.headers["content-type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["content-type"]


def clicks(polygon: Any, n: int, seed: int, label: str) -> list[dict[str, Any]]:
    """``n`` random places inside ``polygon``, as the page sends its labelled clicks."""
    rng = np.random.default_rng(seed)
    w, s, e, n_ = polygon.bounds
    out: list[dict[str, Any]] = []
    while len(out) < n:
        lon, lat = rng.uniform(w, e), rng.uniform(s, n_)
        if polygon.contains(shapely.Point(lon, lat)):
            out.append({"lon": round(lon, 6), "lat": round(lat, 6), "label": label})
    return out


def test_viewer_classifies_a_box_from_labelled_places(
    world: dict[str, Any], store: TesseraStore, base: str, tmp_path: Path
) -> None:
    import io

    import rasterio
    from PIL import Image

    from tessera_vz.serve.maps import PALETTE

    places = clicks(WEST, 60, 1, "west") + clicks(EAST, 60, 2, "east")
    bbox = [0.01, 52.08, 0.09, 52.115]
    status, doc = post(base, "/api/map/classify", {"year": YEAR, "bbox": bbox, "places": places})
    assert status == 200, doc
    assert [c["name"] for c in doc["legend"]] == ["east", "west"]
    assert (
        doc["report"]["folds"] == 5
        and sum(doc["training"].values()) == 120
        and doc["training"]["ok"] > 110
    )
    status, tif, kind = fetch(base, doc["download"])
    assert status == 200 and kind == "image/tiff"
    (tmp_path / "m.tif").write_bytes(tif)
    with rasterio.open(tmp_path / "m.tif") as f:
        classes = f.read(1)
        assert f.nodata == NODATA and f.tags()["TESSERA_CLASS_1"] == "west"
    ds = store.region(tuple(bbox), YEAR)
    assert classes.shape == (ds.sizes["y"], ds.sizes["x"])
    values, known = truth(world, ds, YEAR)
    valid = known & ~np.isnan(values).any(-1)
    want = (values[..., 0] > 0).astype(np.uint8)  # west (code 1) where band 0 > 0
    assert (classes[valid] == want[valid]).mean() >= 0.95
    assert (classes[known & ~valid] == NODATA).all()
    # the overlay: each class its legend colour, no data transparent, at the map's corners
    status, png, kind = fetch(base, doc["png"])
    assert status == 200 and kind == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
    assert rgba.shape[:2] == classes.shape
    for c in doc["legend"]:
        colour = [int(c["colour"][i : i + 2], 16) for i in (1, 3, 5)]
        assert c["colour"] == PALETTE[c["code"]]
        here = classes == c["code"]
        assert here.sum() == c["pixels"] > 1000
        assert (rgba[here][:, :3] == colour).all() and (rgba[here][:, 3] == 255).all()
    assert (rgba[classes == NODATA][:, 3] == 0).all()
    from tessera_vz.serve.corners import corners_lonlat

    assert doc["corners"] == corners_lonlat(ds)  # the region's grid, as previews lie


def test_viewer_similarity_to_a_label(store: TesseraStore, base: str, tmp_path: Path) -> None:
    import rasterio

    places = clicks(WEST, 3, 5, "west") + clicks(EAST, 2, 6, "east")
    bbox = [0.02, 52.09, 0.08, 52.11]
    status, doc = post(base, "/api/map/similar",
                       {"year": YEAR, "bbox": bbox, "places": places, "label": "east"})  # fmt: skip
    assert status == 200, doc
    assert doc["map"] == "similarity" and doc["references"] == 2
    _, tif, _ = fetch(base, doc["download"])
    (tmp_path / "s.tif").write_bytes(tif)
    with rasterio.open(tmp_path / "s.tif") as f:
        got = f.read(1)
    refs = np.array([store.point(p["lon"], p["lat"], YEAR) for p in places[3:]], np.float64)
    emb = store.region(tuple(bbox), YEAR)["embeddings"].values.astype(np.float64)
    unit = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    want = (unit @ (refs / np.linalg.norm(refs, axis=-1, keepdims=True)).T).max(-1)
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], atol=2e-7)
    assert np.isnan(got[~ok]).all()
    lo, hi = doc["legend"]
    assert lo["value"] < hi["value"] <= 1.0


def test_viewer_map_requests_are_guarded(base: str) -> None:
    import http.client
    from urllib.parse import urlsplit

    one = {"year": YEAR, "bbox": [0.02, 52.09, 0.03, 52.1],
           "places": [{"lon": 0.02, "lat": 52.1, "label": "a"}]}  # fmt: skip
    cases = [
        (post(base, "/api/map/classify", one), 400, "at least two classes"),
        (post(base, "/api/map/classify", b"x=1", **{"Content-Type": "text/plain"}), 415, "json"),
        (post(base, "/api/map/classify", one, Origin="http://evil.example"), 403, "own page"),
        (post(base, "/api/map/classify", {**one, "bbox": [0.0, 52.0, 0.1, 52.2]}), 413, "limit"),
        (post(base, "/api/map/classify", {**one, "places": one["places"] * 1001}), 413, "1,000"),
        (post(base, "/api/map/classify", {**one, "model": "svm"}), 400, "model"),
        (post(base, "/api/map/similar", {**one, "label": "b"}), 400, "labelled 'b'"),
        (post(base, "/api/map/similar", {**one, "year": "2024"}), 400, "year"),
        (post(base, "/api/map/similar", b"{" * 300_000), 413, "bytes"),
        (post(base, "/api/map/classify", {**one, "places": [{"lon": 200, "lat": 0}]}), 400, "lon"),
    ]
    for (status, doc), want, words in cases:
        assert status == want, (doc, want)
        assert words.lower() in doc["error"].lower() and "/tmp" not in doc["error"]
    for path in ("/api/map/" + "0" * 32 + ".tif", "/api/map/../x.png", "/api/map/abc.png"):
        status, body, _ = fetch(base, path)
        assert status == 404, (path, body)
    # a page on another name (DNS rebinding) cannot drive it
    conn = http.client.HTTPConnection(urlsplit(base).netloc, timeout=30)
    conn.request("POST", "/api/map/classify", json.dumps(one),
                 {"Host": "evil.example", "Content-Type": "application/json"})  # fmt: skip
    assert conn.getresponse().status == 400
    conn.close()
