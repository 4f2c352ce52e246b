"""Maps in the viewer page, in a real headless Chromium: label two places, classify a box.

The tree of the viewer's API tests (``test_serve_api.build_world``), served by
nginx and indexed; the page labels two places (label names typed in the
page), draws a box, asks for its class map and must show it: the overlay's
pixels in a screenshot are the legend's class colours, the legend names the
labels, and the GeoTIFF download is offered and served.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import sync_playwright

from tessera_vz.reader import open_store
from tessera_vz.serve import create_app
from tessera_vz.serve.maps import PALETTE

from .test_serve_api import LIMITS, running
from .test_serve_browser import FLAGS, MapView, chromium, world  # noqa: F401


@pytest.fixture(scope="module")
def base(world: dict[str, Any]) -> Iterator[str]:  # noqa: F811
    """The viewer over test_serve_browser's world (served by nginx, indexed over it)."""
    with running(create_app(open_store(str(world["out"])), limits=LIMITS)) as url:
        yield url


def rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])


def test_label_two_places_and_see_the_class_map(base: str) -> None:
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type == "error" else None)  # fmt: skip
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(base + "/")
            page.wait_for_selector("body[data-tiles='2025']", timeout=60_000)
            view = MapView(page)
            # Two labelled places (outside the box, so their markers cover no overlay pixel).
            page.click("#label-mode")
            page.fill("#label-name", "water")
            view.click(0.74, 49.95)
            page.fill("#label-name", "field")
            view.click(0.96, 49.95)
            page.wait_for_selector("#maps[data-places='2']", timeout=10_000)
            rows = page.eval_on_selector_all(
                "#label-list .label", "rs => rs.map(r => r.dataset.label)"
            )
            assert rows == ["field", "water"]
            assert page.locator("#pixel").is_hidden()  # labelling clicks read no pixel
            # A box, then its class map.
            view.shift_drag((0.80, 49.97), (0.86, 49.93))
            page.wait_for_selector("#box[data-ready='1']", timeout=120_000)
            before = view.shot()
            page.click("#map-classify")
            page.wait_for_selector("#maps[data-ready='1']", timeout=120_000)
            after = view.shot()
            legend = page.eval_on_selector_all(
                "#map-legend .class", "rs => rs.map(r => [r.dataset.name, r.dataset.colour])"
            )
            assert legend == [["field", PALETTE[0]], ["water", PALETTE[1]]]
            (x0, y0), (x1, y1) = view.xy(0.805, 49.965), view.xy(0.855, 49.935)
            inner = (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
            near = [np.abs(after[inner] - rgb(c)).max(axis=-1) <= 6 for _, c in legend]
            # class colours (texture sampling blends a few; no-data pixels show the preview)
            assert (near[0] | near[1]).mean() > 0.75, (near[0].mean(), near[1].mean())
            assert (np.abs(after[inner] - before[inner]).sum(axis=-1) > 12).mean() > 0.5
            href = page.get_attribute("#map-download", "href") or ""
            assert href.startswith("/api/map/") and href.endswith(".tif")
            with urllib.request.urlopen(base + href, timeout=60) as r:
                assert r.status == 200 and r.headers["content-type"] == "image/tiff"
            assert "classes" in (page.text_content("#map-status") or "")
        finally:
            browser.close()
    assert problems == [], problems


def test_labels_js_is_served_with_the_page(base: str) -> None:
    with urllib.request.urlopen(base + "/", timeout=30) as r:
        html = r.read().decode()
    assert '<script src="/static/labels.js"></script>' in html
    with urllib.request.urlopen(base + "/static/labels.js", timeout=30) as r:
        assert r.status == 200 and b"/api/map/" in r.read()
