"""The viewer page in a real headless Chromium (Debian's, driven by playwright).

The same generated, nginx-served and indexed tree as the API tests; the page
must load with no console error and no request leaving the server, draw the
footprints and gaps (read back from screenshot pixels), show the clicked
pixel's embedding plot with the values ``open_store(...).point`` reads, switch
years, and draw a box's preview with its download links.

``TESSERA_VZ_SCREENSHOT=docs/viewer.png`` also writes the README's screenshot.
"""

from __future__ import annotations

import io
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from PIL import Image
from playwright.sync_api import Page, sync_playwright

from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import TesseraStore, open_store
from tessera_vz.serve import Limits, create_app
from tessera_vz.testing.nginx import NginxServer

from .test_serve_api import LIMITS, YEARS, build_world, running

#: Flags that keep Chromium off the network and working as root in a container.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BACKGROUND = (232, 236, 241)  # the page's map background (the sea), #e8ecf1
LAND = (0xDE, 0xDA, 0xCB)  # LAND in viewer.js, drawn from the app's Natural Earth layer
ZONE31 = (0x5B, 0x6B, 0xD6)  # ZONE_COLOURS[31 % 12] in viewer.js
GAP = (0xD6, 0x45, 0x45)


def chromium() -> str:
    """Debian's chromium binary; fails (never skips) when it is missing."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )
    if found is None:
        pytest.fail("chromium not found: apt-get install chromium (make test does it as root)")
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("browser-src")
    out = tmp_path_factory.mktemp("browser-index")
    specs = build_world(root, out)
    with NginxServer(root) as server:
        report = run_index(
            IndexOptions(source=server.url, out=str(out), manifest=str(root / "manifest.parquet"))
        )
        assert not report.failed and report.indexed == len(specs)
        yield {"root": root, "out": out}


@pytest.fixture(scope="module")
def store(world: dict[str, Any]) -> TesseraStore:
    return open_store(str(world["out"]))


@pytest.fixture(scope="module")
def base(world: dict[str, Any]) -> Iterator[str]:
    with running(create_app(open_store(str(world["out"])), limits=LIMITS)) as url:
        yield url


def ground(lon: float, lat: float) -> tuple[int, int, int]:
    """The map's colour under a place: land or sea, as the shipped coastline layer has it.

    Places tested are well clear of the coast (its line is antialiased).
    """
    from tessera_vz.core.coastline import land_polygons

    land = shapely.union_all(land_polygons((lon - 1, lat - 1, lon + 1, lat + 1)))
    here = shapely.Point(lon, lat)
    assert here.distance(land.boundary) > 0.012, (lon, lat)  # not on the coastline
    return LAND if land.contains(here) else BACKGROUND


def blend(colour: tuple[int, int, int], opacity: float, under: Any = BACKGROUND) -> np.ndarray:
    """A fill colour drawn with ``opacity`` over the map background (or ``under``)."""
    return np.array(colour) * opacity + np.array(under) * (1 - opacity)


class MapView:
    """Screen positions and screenshots of the page's map element."""

    def __init__(self, page: Page) -> None:
        self.page = page
        box = page.locator("#map").bounding_box()
        assert box is not None
        self.left, self.top = box["x"], box["y"]
        self.width, self.height = box["width"], box["height"]

    def xy(self, lon: float, lat: float) -> tuple[float, float]:
        """Position of a lon/lat in the map element (CSS pixels)."""
        p = self.page.evaluate(
            "([lon, lat]) => { const p = tesseraViewer.map.project([lon, lat]); "
            "return [p.x, p.y]; }",
            [lon, lat],
        )
        return float(p[0]), float(p[1])

    def shot(self) -> np.ndarray:
        png = self.page.locator("#map").screenshot()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)

    def colour(self, img: np.ndarray, lon: float, lat: float) -> np.ndarray:
        x, y = self.xy(lon, lat)
        assert 0 <= x < img.shape[1] and 0 <= y < img.shape[0], (lon, lat, x, y)
        return img[round(y), round(x)]

    def click(self, lon: float, lat: float) -> None:
        x, y = self.xy(lon, lat)
        self.page.mouse.click(self.left + x, self.top + y)

    def shift_drag(self, a: tuple[float, float], b: tuple[float, float]) -> None:
        (x0, y0), (x1, y1) = self.xy(*a), self.xy(*b)
        mouse = self.page.mouse
        self.page.keyboard.down("Shift")
        mouse.move(self.left + x0, self.top + y0)
        mouse.down()
        mouse.move(self.left + x1, self.top + y1, steps=8)
        mouse.up()
        self.page.keyboard.up("Shift")


def values_of(page: Page, selector: str) -> list[list[Any]]:
    return page.eval_on_selector_all(
        selector,
        "els => els.map(e => [e.dataset.value, Number(e.getAttribute('height')),"
        " e.closest('g') ? Number(e.closest('g').dataset.year) : null])",
    )


def test_viewer_in_chromium(base: str, store: TesseraStore) -> None:
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)  # fmt: skip
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(base + "/")
            # The newest year is shown first; footprints drawn once the map is idle.
            page.wait_for_selector("body[data-tiles='2025']", timeout=60_000)
            assert page.input_value("#year") == "2025"
            assert page.eval_on_selector_all("#year option", "os => os.map(o => o.value)") == [
                str(y) for y in YEARS
            ]
            view = MapView(page)
            img = view.shot()
            differs = np.abs(img - np.array(BACKGROUND)).sum(axis=-1) > 6
            assert differs.mean() > 0.1, differs.mean()
            tile = view.colour(img, 0.85, 49.95)
            assert np.abs(tile - blend(ZONE31, 0.35, ground(0.85, 49.95))).max() <= 8, tile
            gap = view.colour(img, 0.85, 49.75)  # indexed in 2024 only
            assert np.abs(gap - blend(GAP, 0.45, ground(0.85, 49.75))).max() <= 8, gap
            # Outside the tiles: the Channel and Normandy, from the layer the app serves.
            assert ground(0.62, 50.0) == BACKGROUND and ground(0.62, 49.72) == LAND
            sea, land = view.colour(img, 0.62, 50.0), view.colour(img, 0.62, 49.72)
            assert np.abs(sea - np.array(BACKGROUND)).max() <= 2, sea
            assert np.abs(land - np.array(LAND)).max() <= 2, land
            # Every pixel of the meridian 0.62 E from 49.82 N to 49.90 N: the coast line crosses.
            (x, y0), (_, y1) = view.xy(0.62, 49.90), view.xy(0.62, 49.82)
            column = img[round(y0) : round(y1), round(x)].sum(axis=-1)
            assert column.min() < sum(LAND) - 60, column  # the coastline is drawn, in COAST
            assert base + "/data/land-50m.geojson" in requests

            # Click a pixel: the plot shows the values the reader reads there.
            view.click(0.8623, 49.9342)
            page.wait_for_selector("#pixel[data-ready='1']", timeout=60_000)
            lon = float(page.get_attribute("#pixel", "data-lon") or "nan")
            lat = float(page.get_attribute("#pixel", "data-lat") or "nan")
            assert abs(lon - 0.8623) < 1e-3 and abs(lat - 49.9342) < 1e-3
            loc = store.locate(lon, lat, 2025)
            ident = page.locator("#pixel-id")
            shown_at = [ident.get_attribute(f"data-{k}") for k in ("tile", "row", "col")]
            assert shown_at == [loc.name, str(loc.row), str(loc.col)]
            assert f"{loc.name}  row {loc.row}  col {loc.col}" in (ident.text_content() or "")
            expected = store.point(lon, lat, 2025)
            bars = values_of(page, "#embedding-plot rect.bar")
            shown = np.array([float(v) for v, _, _ in bars], dtype=np.float32)
            np.testing.assert_array_equal(shown, expected)
            heights = np.array([h for _, h, _ in bars])
            ratio = heights / np.abs(expected)
            np.testing.assert_allclose(ratio, ratio.mean(), rtol=0.01, atol=0)
            assert heights.max() > 50  # the largest value spans half the plot
            cells = values_of(page, "#series-plot rect.cell")
            series = store.point(lon, lat, years=list(YEARS))
            for t, year in enumerate(YEARS):
                row = [float(v) for v, _, y in cells if y == year]
                np.testing.assert_array_equal(np.array(row, dtype=np.float32), series[t])

            # Another year: its own footprints; 2025's gap is a tile, the hole a gap.
            page.select_option("#year", "2024")
            page.wait_for_selector("body[data-tiles='2024']", timeout=60_000)
            img24 = view.shot()
            land24 = ground(0.85, 49.75)
            assert np.abs(view.colour(img24, 0.85, 49.75) - blend(ZONE31, 0.35, land24)).max() <= 8
            gap24 = blend(GAP, 0.45, ground(0.85, 49.85))
            assert np.abs(view.colour(img24, 0.85, 49.85) - gap24).max() <= 8

            # Draw a box (Shift+drag): the preview covers it, downloads are offered.
            view.click(0.8345, 49.9121)
            page.wait_for_selector("#pixel[data-ready='1']", timeout=60_000)
            before = view.shot()
            view.shift_drag((0.835, 49.915), (0.865, 49.895))
            page.wait_for_selector("#box[data-ready='1']", timeout=120_000)
            after = view.shot()
            (x0, y0), (x1, y1) = view.xy(0.84, 49.912), view.xy(0.86, 49.903)
            inner = (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
            changed = np.abs(after[inner] - before[inner]).sum(axis=-1) > 12
            assert changed.mean() > 0.8, changed.mean()  # the part with data is coloured
            links = page.eval_on_selector_all(
                "#box-downloads a.download", "as => as.map(a => a.getAttribute('href'))"
            )
            assert [h.rsplit("=", 1)[1] for h in links] == ["tif", "zarr"]
            drawn = page.get_attribute("#box", "data-bbox") or ""
            assert all(f"bbox={drawn}&year=2024&" in h for h in links), (drawn, links)
            corners = np.array([float(v) for v in drawn.split(",")])
            assert np.abs(corners - (0.835, 49.895, 0.865, 49.915)).max() < 1e-3, drawn
            with urllib.request.urlopen(base + links[0], timeout=120) as r:
                assert r.status == 200 and r.headers["content-type"] == "image/tiff"

            target = os.environ.get("TESSERA_VZ_SCREENSHOT")
            if target:  # closer in, so the preview and the click read well in the README
                page.evaluate("() => tesseraViewer.map.jumpTo({center: [0.85, 49.9], zoom: 12})")
                page.wait_for_function(
                    "() => tesseraViewer.map.loaded() && !tesseraViewer.map.isMoving()"
                )
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=target)
        finally:
            browser.close()
    assert problems == [], problems
    own = (base + "/", "blob:" + base + "/", "data:")
    assert [u for u in requests if not u.startswith(own)] == []


def test_large_year_paints_coverage_as_raster(world: dict[str, Any]) -> None:
    """A year over the feature limit: at low zoom the map shows raster coverage, no cells sent."""
    problems: list[str] = []
    requests: list[str] = []
    limits = Limits(features=6)  # 2024 (10 tiles) is "large", 2025 (3 tiles, 6 gaps) is not
    app = create_app(open_store(str(world["out"])), limits=limits)
    with running(app) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(base + "/")
            page.wait_for_selector("body[data-tiles='2025']", timeout=60_000)
            page.evaluate("() => tesseraViewer.map.jumpTo({center: [0.85, 49.8], zoom: 5})")
            requests.clear()
            page.select_option("#year", "2024")
            page.wait_for_selector("body[data-tiles='2024']", timeout=60_000)
            page.wait_for_function(
                "() => tesseraViewer.map.loaded() && !tesseraViewer.map.isMoving()"
            )
            view = MapView(page)
            shown = view.shot()
            page.evaluate(
                "() => tesseraViewer.map.setLayoutProperty('coverage', 'visibility', 'none')"
            )
            page.wait_for_function("() => tesseraViewer.map.loaded()")
            page.wait_for_timeout(300)
            hidden = view.shot()
            tile = view.colour(shown, 0.75, 49.95)
            want = blend(ZONE31, 150 / 255, view.colour(hidden, 0.75, 49.95))
            far = (view.colour(shown, 3.0, 48.0), view.colour(hidden, 3.0, 48.0))  # no tile
        finally:
            browser.close()
    assert problems == [], problems
    assert any("/api/coverage/2024/" in u for u in requests), requests
    assert not any("/api/tiles" in u or "/api/gaps" in u for u in requests), requests
    assert np.abs(tile - want).max() <= 8, (tile, want)
    assert np.abs(far[0] - far[1]).max() <= 2, far
