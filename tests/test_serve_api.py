"""The viewer's public HTTP API against the reader it is built on.

A tile tree is generated, served by nginx, indexed, and the viewer app runs on
a real uvicorn server on loopback. Every answer is compared with what the
public reader API (``open_store(...)``) or the generator's content formula
says: points and time series value for value, footprints tile for tile,
downloads pixel for pixel; bad requests must be 4xx one-line JSON errors.
"""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import shapely.geometry
import xarray as xr
from PIL import Image

from tessera_vz.core.geometry import project, tile_grids
from tessera_vz.core.ports import fresh_port
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import TesseraStore, open_store
from tessera_vz.reader.store import dequantise
from tessera_vz.serve import Limits, create_app
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import (
    TileSpec,
    embedding_values,
    make_tree,
    scale_values,
    write_manifest,
)

BANDS = 8
YEARS = (2024, 2025)
#: 2024: a 3x3 block of cells without its centre (a hole), and one sparse tile
#: below it whose scales are all 0 (no data); 2025: the block's top row only.
BLOCK = (0.7, 49.7, 1.0, 50.0)
HOLE = (0.85, 49.85)
SPARSE = (0.85, 49.65)
TOP_ROW = (0.7, 49.9, 1.0, 50.0)
#: Small limits so that "too large" is cheap to provoke.
LIMITS = Limits(preview_pixels=400_000, region_pixels=90_000, features=100)


def build_world(root: Path, out: Path) -> list[TileSpec]:
    """Write the tree described above under ``root`` (with its manifest)."""
    from tessera_vz.testing.tiles import cell_centres

    block = [c for c in cell_centres(BLOCK) if c != HOLE]
    specs = make_tree(root, centres=block, years=(2024,), bands=BANDS, manifest=False)
    specs += make_tree(
        root, centres=cell_centres(TOP_ROW), years=(2025,), bands=BANDS, manifest=False
    )
    specs += make_tree(
        root, centres=[SPARSE], years=(2024,), bands=BANDS, sparse=True, manifest=False
    )
    write_manifest(root, specs)
    return specs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The tree served by nginx (which stays up: reads go to it) and its index."""
    root = tmp_path_factory.mktemp("serve-src")
    out = tmp_path_factory.mktemp("serve-index")
    specs = build_world(root, out)
    with NginxServer(root) as server:
        report = run_index(
            IndexOptions(source=server.url, out=str(out), manifest=str(root / "manifest.parquet"))
        )
        assert not report.failed and report.indexed == len(specs)
        yield {"root": root, "out": out, "specs": {(s.year, s.name): s for s in specs}}


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yield its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def store(world: dict[str, Any]) -> TesseraStore:
    return open_store(str(world["out"]))


@pytest.fixture(scope="module")
def base(store: TesseraStore) -> Iterator[str]:
    with running(create_app(open_store(store.root), limits=LIMITS)) as url:
        yield url


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: status, headers (lower-case names) and body, 4xx/5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def get_json(url: str) -> Any:
    status, headers, body = get(url)
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def expected_pixel(spec: TileSpec, row: int, col: int) -> np.ndarray:
    """The dequantised value the generator wrote at (row, col) of a tile."""
    if spec.sparse:
        return np.full(spec.bands, np.nan, np.float32)
    e = embedding_values(spec.year, spec.lon, spec.lat, row, col, np.arange(spec.bands))
    s = scale_values(spec.year, spec.lon, spec.lat, row, col)
    return dequantise(e[None], np.array([s]))[0]


def pixel_of(spec: TileSpec, lon: float, lat: float) -> tuple[int, int]:
    g = tile_grids(spec.lon, spec.lat)
    e, n = project(lon, lat, int(g.epsg[0]))
    return int(np.floor((g.top[0] - float(n)) / 10)), int(np.floor((float(e) - g.left[0]) / 10))


def as_array(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float32)


def cell_ring(name: str) -> list[list[float]]:
    lon, lat = (float(v) for v in name.split("_")[1:])
    w, s, e, n = (round(v, 2) for v in (lon - 0.05, lat - 0.05, lon + 0.05, lat + 0.05))
    return [[w, s], [e, s], [e, n], [w, n], [w, s]]


def test_info_and_tiles_match_the_index(base: str, store: TesseraStore) -> None:
    info = get_json(f"{base}/api/info")
    assert info["zones"] == [31] and info["years"] == list(YEARS)
    assert info["bounds"] == [0.7, 49.6, 1.0, 50.0]
    for year in YEARS:
        table = store.tiles(year, 31)
        doc = get_json(f"{base}/api/tiles?year={year}")
        assert doc["type"] == "FeatureCollection"
        assert info["tiles"][str(year)] == table.sizes["tile"] == len(doc["features"])
        by_name = {f["properties"]["tile"]: f for f in doc["features"]}
        assert sorted(by_name) == sorted(table["tile"].values.tolist())
        for name, f in by_name.items():
            assert f["properties"] == {"tile": name, "zone": 31, "year": year}
            assert f["geometry"] == {"type": "Polygon", "coordinates": [cell_ring(name)]}
    # A bbox keeps the tiles whose cell it touches, and only those.
    doc = get_json(f"{base}/api/tiles?year=2024&bbox=0.71,49.91,0.79,49.99")
    assert [f["properties"]["tile"] for f in doc["features"]] == ["grid_0.75_49.95"]


def test_gaps(base: str) -> None:
    gaps24 = get_json(f"{base}/api/gaps?year=2024")["features"]
    assert [(f["properties"]["tile"], f["properties"]["reason"]) for f in gaps24] == [
        ("grid_0.85_49.85", "hole inside the covered area")
    ]
    gaps25 = get_json(f"{base}/api/gaps?year=2025")["features"]
    assert {f["properties"]["tile"] for f in gaps25} == {
        "grid_0.75_49.75", "grid_0.85_49.75", "grid_0.95_49.75", "grid_0.75_49.85",
        "grid_0.95_49.85", "grid_0.85_49.65",
    }  # fmt: skip
    assert {f["properties"]["reason"] for f in gaps25} == {"indexed in another year"}
    assert all(f["geometry"]["coordinates"] == [cell_ring(f["properties"]["tile"])]
               for f in gaps24 + gaps25)  # fmt: skip


def test_point_matches_the_reader(base: str, store: TesseraStore, world: dict[str, Any]) -> None:
    rng = np.random.default_rng(7)
    lons = rng.uniform(0.7, 1.0, 12).tolist()
    lats = rng.uniform(49.9, 50.0, 12).tolist()  # the top row: indexed in both years
    for lon, lat in zip(lons, lats, strict=True):
        for year in YEARS:
            doc = get_json(f"{base}/api/point?lon={lon!r}&lat={lat!r}&year={year}")
            loc = store.locate(lon, lat, year)
            assert (doc["tile"], doc["row"], doc["col"], doc["zone"], doc["year"]) == (
                loc.name, loc.row, loc.col, 31, year)  # fmt: skip
            got = as_array(doc["embedding"])
            np.testing.assert_array_equal(got, store.point(lon, lat, year))
            spec = world["specs"][(year, loc.name)]
            assert pixel_of(spec, lon, lat) == (loc.row, loc.col)
            np.testing.assert_array_equal(got, expected_pixel(spec, loc.row, loc.col))
        series = get_json(f"{base}/api/point?lon={lon!r}&lat={lat!r}&years=all")
        assert series["years"] == list(YEARS)
        values = np.stack([as_array(s["embedding"]) for s in series["series"]])
        np.testing.assert_array_equal(values, store.point(lon, lat, years=list(YEARS)))
    # A place indexed in 2024 only: 2025 is null with the reason, 2024 has its values.
    doc = get_json(f"{base}/api/point?lon=0.78&lat=49.73&years=2025,2024")
    assert [s["year"] for s in doc["series"]] == [2024, 2025]
    first, second = doc["series"]
    np.testing.assert_array_equal(as_array(first["embedding"]), store.point(0.78, 49.73, 2024))
    assert second["embedding"] is None and "no tile grid_0.75_49.75" in second["error"]
    # A pixel without data (the sparse tile's scales are 0) is all null, not zeros.
    doc = get_json(f"{base}/api/point?lon={SPARSE[0]}&lat={SPARSE[1]}&year=2024")
    assert doc["tile"] == "grid_0.85_49.65" and doc["embedding"] == [None] * BANDS


def test_preview_is_the_principal_components(base: str, store: TesseraStore) -> None:
    bbox = (0.83, 49.87, 0.87, 49.92)  # half in the hole, so part of it has no data
    status, headers, body = get(f"{base}/api/preview.png?bbox={','.join(map(str, bbox))}&year=2024")
    assert status == 200 and headers["content-type"] == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(body)))
    region = store.region(bbox, 2024)
    values = region["embeddings"].values
    h, w = region.sizes["y"], region.sizes["x"]
    assert rgba.shape == (h, w, 4)
    assert headers["x-tessera-shape"] == f"{h},{w}"
    nodata = np.isnan(values).all(axis=-1)
    assert 0 < nodata.sum() < nodata.size
    np.testing.assert_array_equal(rgba[..., 3] == 0, nodata)
    # Red follows the first principal component of the valid pixels (up to the
    # percentile stretch, which clips the tails), green the second.
    x = values[~nodata].astype(np.float64)
    _, _, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    for channel in (0, 1):
        pc = (x - x.mean(axis=0)) @ vt[channel]
        lo, hi = np.percentile(pc, [2, 98])
        inside = (pc > lo) & (pc < hi)
        corr = np.corrcoef(pc[inside], rgba[..., channel][~nodata][inside])[0, 1]
        assert abs(corr) > 0.99, (channel, corr)
    # Corners are the region's outer pixel edges, in lon/lat, clockwise from top-left.
    corners = np.array(json.loads(headers["x-tessera-corners"]))
    assert corners.shape == (4, 2)
    # The UTM rectangle is turned against lon/lat, but it covers the whole box.
    box_corners = [(bbox[0], bbox[3]), (bbox[2], bbox[3]), (bbox[2], bbox[1]), (bbox[0], bbox[1])]
    for (px, py), near in zip(box_corners, corners, strict=True):
        edges = [(corners[i], corners[(i + 1) % 4]) for i in range(4)]
        # Clockwise ring: every box corner lies right of (or on) each edge.
        assert all((b[0] - a[0]) * (py - a[1]) - (b[1] - a[1]) * (px - a[0]) <= 0
                   for a, b in edges)  # fmt: skip
        assert np.abs(near - (px, py)).max() < 0.01


def test_region_downloads_match_region(base: str, store: TesseraStore, tmp_path: Path) -> None:
    import rioxarray

    bbox = (0.8, 49.92, 0.83, 49.94)
    query = f"bbox={','.join(map(str, bbox))}&year=2025"
    expected = store.region(bbox, 2025)
    status, headers, body = get(f"{base}/api/region?{query}&format=tif")
    assert status == 200 and headers["content-type"] == "image/tiff"
    assert "attachment" in headers["content-disposition"]
    (tmp_path / "r.tif").write_bytes(body)
    tif = rioxarray.open_rasterio(tmp_path / "r.tif")
    assert tif.shape == (BANDS, expected.sizes["y"], expected.sizes["x"])
    assert tif.rio.crs.to_epsg() == int(expected.attrs["proj:code"].split(":")[1])
    np.testing.assert_array_equal(
        tif.values, expected["embeddings"].transpose("band", "y", "x").values
    )
    status, headers, body = get(f"{base}/api/region?{query}&format=zarr")
    assert status == 200 and headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        names = zf.namelist()
        top = {n.split("/")[0] for n in names}
        assert len(top) == 1 and top.pop().endswith(".zarr")
        zf.extractall(tmp_path / "unzipped")
    (store_dir,) = list((tmp_path / "unzipped").iterdir())
    got = xr.open_zarr(store_dir, zarr_format=3, consolidated=False)
    xr.testing.assert_equal(got["embeddings"].load(), expected["embeddings"])
    assert got.attrs["proj:code"] == expected.attrs["proj:code"]


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/api/tiles", 400, "missing query parameter 'year'"),
        ("/api/tiles?year=twenty", 400, "integer"),
        ("/api/tiles?year=1999", 404, "not indexed"),
        ("/api/tiles?year=2024&bbox=1,2,3", 400, "four comma-separated"),
        ("/api/tiles?year=2024&bbox=-180,-90,180,90", 200, ""),
        ("/api/point?lon=0.8&lat=49.95", 400, "missing query parameter 'year'"),
        ("/api/point?lon=abc&lat=49.95&year=2024", 400, "lon must be a number"),
        ("/api/point?lon=0.8&lat=95&year=2024", 400, "lat must lie in"),
        ("/api/point?lon=nan&lat=49.9&year=2024", 400, "lon must lie in"),
        ("/api/point?lon=0.8&lat=10&year=2024", 404, "no tile grid_0.85_10.05"),
        ("/api/point?lon=20&lat=49.9&year=2024", 404, "no repository for UTM zone 34"),
        ("/api/point?lon=0.8&lat=49.95&year=2023", 404, "year 2023 is not indexed"),
        ("/api/point?lon=0.8&lat=49.95&years=2024,x", 400, "integer"),
        ("/api/preview.png?bbox=0.8,49.9,0.7,49.95&year=2024", 400, "west < east"),
        ("/api/preview.png?bbox=0.7,49.7,1.0,50.0&year=2024", 413, "over the limit"),
        ("/api/preview.png?bbox=10.0,49.9,10.01,49.91&year=2024", 404, "UTM zone(s) [32]"),
        ("/api/preview.png?bbox=0.851,49.851,0.852,49.852&year=2024", 404, "no indexed tile"),
        ("/api/region?bbox=0.8,49.9,0.81,49.91&year=2024&format=exe", 400, "format must be"),
        ("/api/region?bbox=0.7,49.9,0.9,50.0&year=2024", 413, "over the limit"),
        ("/api/nothing", 404, "Not Found"),
        ("/static/nothing.js", 404, "Not Found"),
    ],
)
def test_bad_requests_are_one_line_json(base: str, path: str, status: int, says: str) -> None:
    got, headers, body = get(base + path)
    assert got == status, body
    if status == 200:
        return
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert set(doc) == {"error"} and says in doc["error"], doc
    assert "\n" not in doc["error"] and "Traceback" not in doc["error"]


@pytest.mark.parametrize(
    "raw",
    [
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/static/maplibre-gl/../../app.py",
        "/static/%2e%2e/%2e%2e/export.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/../../../../etc/passwd",
        "/data/../app.py",
        "/data/%2e%2e/core/coastline.py",
    ],
)
def test_static_files_only_from_the_package(base: str, raw: str) -> None:
    """Raw request targets (no client-side normalisation) never leave the static folder."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("GET", raw, skip_accept_encoding=True)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 404, (raw, resp.status, body[:200])
    assert b"def " not in body and b"root:" not in body


def test_land_layer_is_served_from_the_package(base: str) -> None:
    """The viewer's coastlines: the shipped Natural Earth GeoJSON, the bytes of the package's."""
    from tessera_vz.core.coastline import land_file

    status, _, body = get(base + "/data/land-50m.geojson")
    assert status == 200 and body == land_file().read_bytes()
    doc = json.loads(body)
    geom = shapely.geometry.shape(doc["features"][0]["geometry"])
    assert geom.geom_type == "MultiPolygon" and len(geom.geoms) > 1000
    assert geom.contains(shapely.Point(2.35, 48.85)) and not geom.contains(shapely.Point(-30, 45))
    assert shapely.Polygon.from_bounds(-180, -90, 180, 90).contains(geom)  # split at +/-180


def test_page_and_static_files_are_served_read_only(base: str) -> None:
    status, headers, body = get(base + "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/static/maplibre-gl/maplibre-gl.js" in body
    assert "script-src 'self'" in headers["content-security-policy"]
    status, headers, body = get(base + "/static/maplibre-gl/maplibre-gl.js")
    assert status == 200 and b"MapLibre" in body[:2000] and b"5.24.1" in body
    status, _, _ = get(base + "/static/maplibre-gl/LICENSE.txt")
    assert status == 200
    req = urllib.request.Request(base + "/api/point?lon=0.8&lat=49.95&year=2024", method="POST")
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("POST was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 405
        assert set(json.loads(exc.read())) == {"error"}


def test_too_many_footprints_for_one_answer(store: TesseraStore) -> None:
    """Over the feature limit the whole year is refused (413); a bbox gets its part."""
    with running(create_app(store, limits=Limits(features=4))) as url:
        status, _, body = get(f"{url}/api/tiles?year=2024")
        assert status == 413 and "9 tiles of 2024" in json.loads(body)["error"]
        doc = get_json(f"{url}/api/tiles?year=2024&bbox=0.71,49.71,0.89,49.89")
        assert len(doc["features"]) == 3  # the 2x2 cells touched, less the hole
        assert get_json(f"{url}/api/info")["limits"]["features"] == 4


def test_cli_serve(world: dict[str, Any], store: TesseraStore) -> None:
    """`tessera-vz serve STORE --port P` answers the API as the app does in-process."""
    port = fresh_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tessera_vz.cli", "serve", str(world["out"]), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                info = get_json(f"http://127.0.0.1:{port}/api/info")
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "serve did not answer within 60 s"
                time.sleep(0.2)
        assert info["years"] == list(YEARS) and info["limits"]["region_pixels"] == 1_000_000
        doc = get_json(f"http://127.0.0.1:{port}/api/point?lon=0.81&lat=49.93&year=2025")
        np.testing.assert_array_equal(as_array(doc["embedding"]), store.point(0.81, 49.93, 2025))
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in stderr
    bad = subprocess.run(
        [sys.executable, "-m", "tessera_vz.cli", "serve", str(world["root"] / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "error" in bad.stderr


def test_preview_of_per_band_scales_equals_per_pixel() -> None:
    """Older runs' (H, W, bands) scales give the same colours as the same per-pixel scales."""
    from tessera_vz.serve.preview import principal_rgb

    rng = np.random.default_rng(3)
    emb = rng.integers(-127, 128, size=(40, 30, BANDS), dtype=np.int8)
    scale = rng.uniform(0.001, 0.01, size=(40, 30)).astype(np.float32)
    scale[:3, :5] = np.nan  # no data
    per_pixel = principal_rgb(emb, scale)
    per_band = principal_rgb(emb, np.repeat(scale[..., None], BANDS, axis=-1))
    np.testing.assert_array_equal(per_band[..., 3], per_pixel[..., 3])
    assert (per_pixel[:3, :5, 3] == 0).all() and (per_pixel[3:, :, 3] == 255).all()
    assert np.abs(per_band.astype(int) - per_pixel.astype(int)).max() <= 1  # float rounding
