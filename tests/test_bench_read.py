"""Smoke test of the read benchmark's parts (benchmarks/read_points.py and helpers).

The benchmark runs for minutes; this checks in seconds, on a 3-tile tree over
HTTPS, what its figures rest on: the rewritten store holds and serves the very
pixels the reader reads (same zone lattice, same window), the link counts
requests and bytes on both sides of the delay proxy, and the RESULTS.md
section survives a regeneration by scale.py. No timing is asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.tiles import make_tree
from tessera_vz.testing.tls import TestCA

from .conftest import serve_tls

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import links
import read_points
import results_section
import rewritten

YEAR = read_points.YEAR


@pytest.fixture
def served(tmp_path: Path, https: TestCA) -> Any:
    """Three real-size sparse tiles under ``www/tiles`` (the middle one is read), nginx
    over TLS, an index."""
    www = tmp_path / "www"
    specs = make_tree(
        www / "tiles", centres=read_points.centres(3), years=(YEAR,), bands=128, sparse=True
    )
    server = serve_tls(www, https)
    try:
        url = server.url + "tiles/"
        index = tmp_path / "index"
        report = run_index(
            IndexOptions(source=url, out=str(index), manifest=str(www / "tiles/manifest.parquet"))
        )
        assert not report.failed
        yield www, specs, server, index
    finally:
        server.stop()


def test_rewritten_store_serves_the_readers_pixels(served: Any) -> None:
    www, specs, server, index = served
    store = open_store(str(index))
    table = store.tiles(YEAR, read_points.ZONE)
    w = read_points.workload(specs, table, clustered=100, repeat=2)
    grid = rewritten.ZoneGrid.of(table)
    facts = rewritten.write(www / read_points.REWRITE, grid, read_points.rewrite_boxes(grid, w))
    assert facts["chunks_written"] >= 1
    # Realistic bytes: zstd saves little (zeros would shrink a thousandfold); the
    # edge chunks of this small grid are padded with zeros, hence not ~1.07.
    assert 1.0 < facts["compression_ratio"] < 2
    remote = rewritten.RewrittenStore(server.url + read_points.REWRITE + "/")

    # A point: the pixel the reader locates is the zone pixel the rewrite reads.
    lon, lat = w.points[0]
    loc = store.locate(lon, lat, YEAR)
    rows, cols = grid.pixels([lon], [lat])
    assert rows[0] == round((grid.top - loc.facts["top"]) / 10) + loc.row
    assert cols[0] == round((loc.facts["left"] - grid.left) / 10) + loc.col
    value = remote.point(int(rows[0]), int(cols[0]))
    assert value.shape == (128,) and np.isfinite(value).all() and np.abs(value).max() > 0

    # Clustered points come back in their order, equal to single-point reads.
    c_rows, c_cols = grid.pixels(*w.clustered)
    many = remote.points(c_rows[:5], c_cols[:5])
    for i in range(5):
        np.testing.assert_array_equal(many[i], remote.point(int(c_rows[i]), int(c_cols[i])))

    # A region: the rewrite's window is the reader's window, pixel for pixel.
    bbox, _ = w.regions["region"]
    reg = store.region(bbox, YEAR, dequantise=False)
    rsl, csl = read_points.region_pixels(grid, bbox)
    assert (rsl.stop - rsl.start, csl.stop - csl.start) == (reg.sizes["y"], reg.sizes["x"])
    np.testing.assert_allclose(grid.top - 10 * (rsl.start + 0.5), reg.y.values[0])
    np.testing.assert_allclose(grid.left + 10 * (csl.start + 0.5), reg.x.values[0])
    emb, sca = remote.region(rsl, csl)
    assert emb.shape == reg.embeddings.shape and sca.shape == reg.scales.shape
    assert np.isfinite(sca).all() and ((sca > 0) & (sca < 1)).all()


def test_links_count_both_sides_of_the_proxy(served: Any) -> None:
    _, specs, server, index = served
    with links.ProxyProcess(server.url, delay=0.005) as proxy:
        url = proxy.url + "tiles/"
        run_index(IndexOptions(source=url, out=str(index) + "-proxy",
                               manifest=str(server.root / "tiles/manifest.parquet")))  # fmt: skip
        store = open_store(str(index) + "-proxy")
        link = links.Link("+10 ms", url, server, proxy)
        lon, lat = specs[0].lon + 0.01, specs[0].lat - 0.01
        store.point(lon, lat, YEAR)  # connections open
        seconds, traffic, value = read_points.timed(
            link, "/tiles/", lambda: store.point(lon + 0.001, lat, YEAR)
        )
    assert value.shape == (128,)
    assert seconds >= 0.010  # at least one delayed round trip
    assert traffic.requests == 2  # embeddings and scale, issued together
    assert 0 < traffic.sent < 1024
    assert traffic.up is not None and traffic.down is not None
    assert traffic.down > traffic.sent  # TLS records on top of what nginx sent
    assert traffic.up > 0 and traffic.connections == 0  # no new connection for a warm point


def test_results_section_survives_regeneration(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Scale results\n\nold tables\n")
    results_section.write(path, "## Reads\n\nfirst")
    results_section.write(path, "## Reads\n\nsecond")
    text = path.read_text()
    assert text.startswith("# Scale results\n\nold tables\n")
    assert "second" in text and "first" not in text and text.count(results_section.BEGIN) == 1
    # The marker rides on the section's heading, so a script that replaces the
    # "## " section above it (up to the next heading) leaves it whole.
    assert f"## Reads {results_section.BEGIN}\n" in text
    regenerated = results_section.keep(path, "# Scale results\n\nnew tables\n")
    assert "new tables" in regenerated and "old tables" not in regenerated
    assert "second" in regenerated and regenerated.count(results_section.END) == 1
