"""What a cold reader of a published index asks the web server for, and what it reads.

A published index (``zones.json`` and one Icechunk repository per zone on a
static HTTPS server) is read through the loopback repository proxy
(:mod:`tessera_vz.core.published`). A cold reader's time over a slow link is
its round trips, so these tests count the requests nginx logs: a cold point
fetches the repository info once per zone, never the version-1 objects that
do not exist (no 404), no object twice; with the tiles table cached it
fetches no snapshot at all. Points across three zones equal ``np.load`` of
the source files and the region reads at the same pixels.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tessera_vz.core import object_cache, published
from tessera_vz.core.geometry import project
from tessera_vz.core.quantisation import dequantise
from tessera_vz.reader import open_store, point_groups, zone_year
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import make_tree, write_manifest
from tessera_vz.testing.tls import TestCA

from .conftest import published_over_https

YEAR = 2024
#: Across the zone 31/32 and 32/33 boundaries (at 6 and 12 degrees east).
BOXES = ((5.8, 44.9, 6.2, 45.1), (11.9, 44.9, 12.1, 45.1))
#: Requests a cold point may make to the index of one zone: zones.json, the repository
#: info, the snapshot and the tiles table (a manifest per column, two chunk objects).
#: Before this budget it took 37, three of them 404s and five the same `repo`.
COLD_POINT_REQUESTS = 30


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, https: TestCA) -> Iterator[dict[str, Any]]:
    www = tmp_path_factory.mktemp("www")
    specs = []
    for box in BOXES:
        specs += make_tree(www / "tiles", bbox=box, years=(YEAR,), bands=4, manifest=False)
    write_manifest(www / "tiles", specs)
    with published_over_https(www, https) as server:
        yield {"www": www, "server": server, "url": server.url + "index/", "specs": specs}


@pytest.fixture
def fresh_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new process's repository proxy: nothing in its memory yet."""
    monkeypatch.setattr(published, "_PROXY", None)


def index_requests(server: NginxServer) -> list[dict[str, Any]]:
    return [r for r in server.requests() if r["uri"].startswith("/index/")]


def test_a_cold_point_makes_each_index_request_once_and_none_for_missing_objects(
    site: dict[str, Any], fresh_proxy: None
) -> None:
    server: NginxServer = site["server"]
    spec = site["specs"][0]
    server.clear_log()
    value = open_store(site["url"], allow_private_sources=True).point(spec.lon, spec.lat, YEAR)
    assert value.shape == (4,)
    asked = index_requests(server)
    uris = Counter(r["uri"] for r in asked)
    assert [r for r in asked if r["status"] == 404] == []  # no version-1 probe reached it
    assert max(uris.values()) == 1, uris.most_common(3)  # `repo` included: once
    assert sum(u.endswith("/repo") for u in uris) == 1  # one zone opened, not three
    assert len(asked) <= COLD_POINT_REQUESTS, sorted(uris)


def test_with_the_table_cached_a_cold_point_loads_no_snapshot(
    site: dict[str, Any], fresh_proxy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: NginxServer = site["server"]
    spec = site["specs"][1]
    open_store(site["url"], allow_private_sources=True).point(spec.lon, spec.lat, YEAR)
    monkeypatch.setattr(published, "_PROXY", None)  # a second process, same cache folder
    server.clear_log()
    again = open_store(site["url"], allow_private_sources=True).point(spec.lon, spec.lat, YEAR)
    uris = [r["uri"].rsplit("/index/", 1)[1] for r in index_requests(server)]
    assert sorted(uris) == ["utm31.icechunk/repo", "zones.json"], uris
    assert again.shape == (4,)


def test_a_second_process_takes_immutable_objects_from_the_cache_folder(
    site: dict[str, Any], fresh_proxy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: NginxServer = site["server"]
    spec = site["specs"][2]
    store = open_store(site["url"], allow_private_sources=True)
    first = store.open_tile(spec.lon, spec.lat, YEAR).embeddings.values
    monkeypatch.setattr(published, "_PROXY", None)  # a second process, same cache folder
    server.clear_log()
    again = open_store(site["url"], allow_private_sources=True).open_tile(spec.lon, spec.lat, YEAR)
    np.testing.assert_array_equal(again.embeddings.values, first)
    asked = [r["uri"].rsplit("/index/", 1)[1] for r in index_requests(server)]
    assert all(u == "zones.json" or u.endswith("/repo") for u in asked), asked


def from_sources(site: dict[str, Any], tile: str, row: int, col: int) -> np.ndarray:
    """The dequantised pixel, read with ``np.load`` from the tile's source files."""
    spec = next(s for s in site["specs"] if s.name == tile)
    tiles = site["www"] / "tiles"
    emb = np.load(tiles / spec.emb_path, mmap_mode="r")[row, col]
    scale = np.load(tiles / spec.scales_path, mmap_mode="r")[row, col]
    return dequantise(np.asarray(emb)[None], np.asarray(scale)[None])[0]


def test_points_across_three_zones_equal_the_sources_and_the_regions(
    site: dict[str, Any], fresh_proxy: None
) -> None:
    store = open_store(site["url"], allow_private_sources=True)
    rng = np.random.default_rng(23)
    boxes = [(5.81, 44.91, 5.99, 45.09), (6.01, 44.91, 6.19, 45.09), (12.01, 44.91, 12.09, 45.09)]
    lon = np.concatenate([rng.uniform(b[0], b[2], 40) for b in boxes])
    lat = np.concatenate([rng.uniform(b[1], b[3], 40) for b in boxes])
    table = store.sample(pa.table({"lon": lon, "lat": lat}), YEAR, batch_size=50)
    got = np.stack([table.column(f"b{b:03d}").to_numpy(zero_copy_only=False)
                    for b in range(4)], axis=1).astype(np.float32)  # fmt: skip
    np.testing.assert_array_equal(got, store.points(lon, lat, YEAR))
    zones = {int(np.floor((x + 180) / 6)) + 1 for x in lon}
    assert zones == {31, 32, 33}
    tiles, rows, cols = (table.column(c).to_pylist() for c in ("tile", "row", "col"))
    status = table.column("status").to_pylist()
    assert status.count("ok") > 100, Counter(status)
    for i in range(lon.size):
        expected = from_sources(site, tiles[i], rows[i], cols[i])
        np.testing.assert_array_equal(got[i], expected)
    for box in boxes:
        ds = store.region(box, YEAR)
        epsg = int(ds.attrs["proj:code"].split(":")[1])
        inside = np.flatnonzero(
            (lon >= box[0]) & (lon <= box[2]) & (lat >= box[1]) & (lat <= box[3])
        )
        e, n = project(lon[inside], lat[inside], epsg)
        x0, y0 = float(ds.x[0]) - 5, float(ds.y[0]) + 5  # pixel edges of the region's lattice
        c = np.floor((e - x0) / 10).astype(int)
        r = np.floor((y0 - n) / 10).astype(int)
        values = ds.embeddings.values[r, c]
        np.testing.assert_array_equal(values, got[inside])


def test_a_batch_over_many_zones_keeps_few_loaded_and_reads_the_same(
    site: dict[str, Any], fresh_proxy: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    lon = np.concatenate([rng.uniform(5.81, 6.19, 60), rng.uniform(11.91, 12.09, 60)])
    lat = rng.uniform(44.91, 45.09, lon.size)
    points = pa.table({"lon": lon, "lat": lat})
    unbounded = open_store(site["url"], allow_private_sources=True)
    expected = unbounded.sample(points, YEAR)
    expected_values = unbounded.points(lon, lat, YEAR)
    monkeypatch.setattr(zone_year, "MAX_LOADED", 1)
    monkeypatch.setattr(point_groups, "GROUP_ZONES", 1)
    store = open_store(site["url"], allow_private_sources=True)
    got = store.sample(points, YEAR, batch_size=70)
    assert got.equals(expected)
    assert got.schema.metadata == expected.schema.metadata  # the same snapshots, named
    assert len(store._zone_years.loaded()) == 1
    np.testing.assert_array_equal(store.points(lon, lat, YEAR), expected_values)
    assert np.isfinite(expected_values).all(axis=1).sum() > 60


def test_a_batch_opens_the_zones_it_needs_only(site: dict[str, Any], fresh_proxy: None) -> None:
    server: NginxServer = site["server"]
    server.clear_log()
    store = open_store(site["url"], allow_private_sources=True)
    store.points([5.85, 5.9], [45.0, 45.05], YEAR)  # zone 31, near no other zone
    repos = {r["uri"].split("/")[2] for r in index_requests(server) if r["uri"].endswith("/repo")}
    assert repos == {"utm31.icechunk"}, repos


def test_a_region_across_three_zones_equals_the_points_at_its_pixels(
    site: dict[str, Any], fresh_proxy: None
) -> None:
    store = open_store(site["url"], allow_private_sources=True)
    ds = store.region((5.95, 44.95, 12.05, 44.97), YEAR, crs="EPSG:4326", resolution=0.005)
    lon, lat = np.meshgrid(ds.x.values, ds.y.values)
    values = ds.embeddings.values.reshape(-1, 4)
    points = store.points(lon.ravel(), lat.ravel(), YEAR)
    np.testing.assert_array_equal(values, points)
    found = np.isfinite(values).all(axis=1)
    zones = set((np.floor((lon.ravel()[found] + 180) / 6) + 1).astype(int).tolist())
    assert zones == {31, 32, 33}, zones


def test_the_object_cache_is_bounded_and_keeps_what_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(object_cache, "MAX_FILES", 4)
    monkeypatch.setattr(object_cache, "PRUNE_EVERY", 1)
    monkeypatch.setattr(object_cache, "_SAVED", 0)
    url = "https://mirror.example.org/index/utm31.icechunk/snapshots/"
    object_cache.save(url + "HOT", b"hot")
    for i in range(10):
        time.sleep(0.02)  # file times tick coarsely: keep the order of use visible
        object_cache.save(url + f"S{i}", bytes([i]) * 10)
        time.sleep(0.02)
        assert object_cache.load(url + "HOT") == b"hot"  # used, so kept
    kept = [i for i in range(10) if object_cache.load(url + f"S{i}") is not None]
    assert kept == [7, 8, 9]
    assert object_cache.load(url + "S9") == bytes([9]) * 10
