"""Windows and clustered points read merged row ranges straight from the sources.

Icechunk fetches one virtual chunk per request, and the divisor rule gives
many real tiles one-row chunks, so through the Icechunk store a window would
cost a request per row. These tests index with one-row chunks (a small chunk
budget) and check that ``region`` and clustered ``points`` cost a few
requests, return exactly the bytes of the Icechunk path and of the source
files, and keep that path's guarantees: a changed source fails with an error
naming it, and a source the reader did not authorise is never contacted.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.errors import ConfigurationError, SourceChangedError
from tessera_vz.core.geometry import unproject
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store, placement, range_plan
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import TileSpec, make_tree, write_manifest
from tessera_vz.testing.tls import TestCA

from .test_reader import _check_region, expected_at

YEAR = 2024
BBOX = (0.8, 49.8, 1.0, 50.0)  # 2 x 2 cells in UTM zone 31 north
ONE_ROW = 1024  # chunk budget below one row of a 4-band tile: one-row chunks


def _index(server: NginxServer, root: Path, out: Path) -> None:
    """Index the tree as served by nginx, with one-row chunks."""
    opts = IndexOptions(
        source=server.url, out=str(out), manifest=str(root / "manifest.parquet"),
        chunk_budget=ONE_ROW,
    )  # fmt: skip
    assert run_index(opts).exit_code == 0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, https: TestCA) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("direct-tree")
    specs = make_tree(root, bbox=BBOX, years=(YEAR,), bands=4)
    out = tmp_path_factory.mktemp("direct-index")
    with NginxServer(root, tls=https) as server:
        _index(server, root, out)
        yield {
            "root": root,
            "out": out,
            "server": server,
            "specs": {(s.year, s.name): s for s in specs},
            "list": specs,
        }


def _npy_requests(server: NginxServer) -> int:
    return sum(1 for r in server.requests() if r["uri"].endswith(".npy"))


def _full_width_bbox(store: Any, spec: TileSpec, rows: int) -> tuple[float, ...]:
    """A bbox spanning the tile's full width over its top ``rows`` rows."""
    facts = store.tiles(YEAR, 31).sel(tile=spec.name)
    left, top, width = float(facts.left), float(facts.top), int(facts.width)
    west, north = unproject(left + 10, top - 10, 32631)
    east, south = unproject(left + 10 * width - 10, top - 10 * rows, 32631)
    return (float(west), float(south), float(east), float(north))


def test_one_row_chunks_are_what_is_indexed(served: dict[str, Any]) -> None:
    store = open_store(str(served["out"]))
    table = store.tiles(YEAR, 31)
    assert set(table["emb_chunk_rows"].values.tolist()) == {1}


def test_region_reads_a_few_merged_ranges_with_the_same_bytes(served: dict[str, Any]) -> None:
    server: NginxServer = served["server"]
    spec = served["list"][0]
    direct = open_store(str(served["out"]))
    bbox = _full_width_bbox(direct, spec, rows=300)
    direct.tiles(YEAR, 31)
    server.clear_log()
    got = direct.region(bbox, YEAR, dequantise=False)
    fast = _npy_requests(server)
    rows = got.sizes["y"]
    server.clear_log()
    plain = open_store(str(served["out"]), direct_reads=False).region(bbox, YEAR, dequantise=False)
    slow = _npy_requests(server)
    # Through Icechunk: at least one request per row of embeddings; directly:
    # one merged range per tile and file (plus parallel parts of long ranges).
    assert slow >= rows, (slow, rows)
    assert fast <= 8, fast
    np.testing.assert_array_equal(got.embeddings.values, plain.embeddings.values)
    np.testing.assert_array_equal(got.scales.values, plain.scales.values)
    assert _check_region(served, direct.region(bbox, YEAR), YEAR, every=2) > 1000


def test_clustered_points_merge_rows_and_match_the_source(served: dict[str, Any]) -> None:
    server: NginxServer = served["server"]
    rng = np.random.default_rng(5)
    spec = served["list"][1]
    lons = spec.lon + rng.normal(0, 0.002, 300)
    lats = spec.lat + rng.normal(0, 0.0015, 300)
    direct = open_store(str(served["out"]))
    direct.tiles(YEAR, 31)
    server.clear_log()
    values = direct.points(lons, lats, YEAR)
    fast = _npy_requests(server)
    server.clear_log()
    plain = open_store(str(served["out"]), direct_reads=False).points(lons, lats, YEAR)
    slow = _npy_requests(server)
    assert fast < slow / 2, (fast, slow)
    np.testing.assert_array_equal(values, plain)
    for i in range(lons.size):
        exp = expected_at(served["specs"], YEAR, lons[i], lats[i])
        assert exp is not None
        np.testing.assert_array_equal(values[i], exp)


def test_unauthorised_source_is_never_contacted(served: dict[str, Any]) -> None:
    server: NginxServer = served["server"]
    spec = served["list"][2]
    store = open_store(str(served["out"]), allowed_sources=["https://mirror.example.org/"])
    bbox = _full_width_bbox(store, spec, rows=50)
    server.clear_log()
    with pytest.raises(ConfigurationError, match="authorised"):
        store.region(bbox, YEAR)
    lons = np.full(40, spec.lon) + np.linspace(-0.01, 0.01, 40)
    with pytest.raises(ConfigurationError, match="authorised"):
        store.points(lons, np.full(40, spec.lat), YEAR)
    assert _npy_requests(server) == 0


def test_changed_source_fails_direct_reads(tmp_path: Path) -> None:
    """A file rewritten after indexing fails loudly instead of returning its new bytes."""
    root = tmp_path / "tree"
    specs = make_tree(root, bbox=(0.8, 49.8, 0.9, 49.9), years=(YEAR,), bands=4)
    spec = specs[0]
    out = tmp_path / "index"
    with NginxServer(root) as server:
        _index(server, root, out)
        store = open_store(str(out))
        bbox = _full_width_bbox(store, spec, rows=100)
        before = store.region(bbox, YEAR)
        # Same size, other bytes, a later modification time.
        path = root / spec.emb_path
        tmp = path.with_suffix(".new")
        shutil.copyfile(path, tmp)
        with open(tmp, "r+b") as f:
            f.seek(-4096, os.SEEK_END)
            f.write(bytes(4096))
        os.replace(tmp, path)
        stat = path.stat()
        os.utime(path, (stat.st_atime + 5, stat.st_mtime + 5))
        fresh = open_store(str(out))
        with pytest.raises(SourceChangedError, match=f"{server.url.rstrip('/')}/{spec.emb_path}"):
            fresh.region(bbox, YEAR)
        lons = spec.lon + np.linspace(-0.01, 0.01, 50)
        lats = spec.lat + np.linspace(0.035, 0.04, 50)  # many rows: the direct path
        with pytest.raises(SourceChangedError, match="re-run `tessera-vz index --reprobe`"):
            fresh.points(lons, lats, YEAR)
        server.clear_log()
        with pytest.raises(SourceChangedError, match="re-run `tessera-vz index --reprobe`"):
            fresh.points(lons, lats, YEAR, gap=64)  # rows apart: one multi-range request
        assert any("," in (r["range"] or "") for r in server.requests()), server.requests()
        assert not np.isnan(before.embeddings.values).all()


def _range_counts(server: NginxServer) -> list[int]:
    """Ranges per ranged request to a tile file, in log order."""
    return [
        len(r["range"].split(","))
        for r in server.requests()
        if r["uri"].endswith(".npy") and r["range"]
    ]


def _cluster(spec: TileSpec, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return spec.lon + rng.normal(0, 0.002, n), spec.lat + rng.normal(0, 0.0015, n)


def test_cluster_rows_share_one_multi_range_request(served: dict[str, Any]) -> None:
    """Rows too far apart to merge cost a part each, not a request each."""
    server: NginxServer = served["server"]
    spec = served["list"][3]
    lons, lats = _cluster(spec, 150, seed=11)
    store = open_store(str(served["out"]))
    store.tiles(YEAR, 31)
    server.clear_log()
    # A gap below one row (4 bands): every row of the cluster is its own range.
    values = store.points(lons, lats, YEAR, gap=64)
    counts = _range_counts(server)
    assert len(counts) <= 4, counts  # embeddings and scales, up to 200 ranges each
    assert max(counts) > 20, counts
    for i in range(lons.size):
        exp = expected_at(served["specs"], YEAR, lons[i], lats[i])
        np.testing.assert_array_equal(values[i], exp)


def test_server_without_multi_range_is_read_range_by_range(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A mirror that answers multi-range requests with the whole file still reads exactly."""
    root = tmp_path / "tree"
    specs = make_tree(root, bbox=(0.8, 49.8, 0.9, 49.9), years=(YEAR,), bands=4)
    spec = specs[0]
    out = tmp_path / "index"
    with NginxServer(root, max_ranges=1) as server:
        _index(server, root, out)
        store = open_store(str(out))
        store.tiles(YEAR, 31)
        lons, lats = _cluster(spec, 60, seed=12)
        server.clear_log()
        with caplog.at_level("WARNING", logger="tessera_vz.core.boundary"):
            values = store.points(lons, lats, YEAR, gap=64)
        whole = [r for r in server.requests() if r["status"] == 200]
        ranged = [r for r in server.requests() if r["status"] == 206]
        assert len(whole) == 1, whole  # the first multi-range request went alone
        assert ranged and all("," not in r["range"] for r in ranged), ranged
        assert "answers multi-range requests with whole files" in caplog.text
        specs_by = {(s.year, s.name): s for s in specs}
        for i in range(lons.size):
            np.testing.assert_array_equal(values[i], expected_at(specs_by, YEAR, lons[i], lats[i]))
        server.clear_log()
        again = store.points(lons, lats, YEAR, gap=64)  # the root is known now
        assert all(r["status"] == 206 for r in server.requests())
        np.testing.assert_array_equal(again, values)


def test_big_endian_scales_and_a_mirror_without_multi_range_read_windows_exactly(
    tmp_path: Path,
) -> None:
    """Scales in the other byte order are cast, not copied as bytes; a mirror that
    refuses multi-range requests still serves every row of a window."""
    root = tmp_path / "tree"
    specs = make_tree(root, bbox=BBOX, years=(YEAR,), bands=4, manifest=False)
    for spec in specs[::2]:  # mixed byte orders in one window
        path = root / spec.scales_path
        np.save(path, np.load(path).astype(">f4"))
    write_manifest(root, specs)
    served = {"specs": {(s.year, s.name): s for s in specs}}
    for max_ranges in (None, 1):
        out = tmp_path / f"index-{max_ranges}"
        with NginxServer(root, max_ranges=max_ranges) as server:
            _index(server, root, out)
            store = open_store(str(out))
            assert "<f4" in store.tiles(YEAR, 31)["scales_descr"].values.tolist()
            assert ">f4" in store.tiles(YEAR, 31)["scales_descr"].values.tolist()
            bbox = (0.84, 49.84, 0.96, 49.96)  # all four tiles, their edges and corners
            got = store.region(bbox, YEAR, dequantise=False)
            plain = open_store(str(out), direct_reads=False).region(bbox, YEAR, dequantise=False)
            np.testing.assert_array_equal(got.embeddings.values, plain.embeddings.values)
            np.testing.assert_array_equal(got.scales.values, plain.scales.values)
            assert _check_region(served, store.region(bbox, YEAR), YEAR, every=3) > 1000


def test_multi_range_connections_stay_open_between_reads(served: dict[str, Any]) -> None:
    """Like obstore's stores, the multi-range client keeps its connections between
    reads instead of opening one per request."""
    server: NginxServer = served["server"]
    store = open_store(str(served["out"]))
    spec = served["list"][0]
    lons, lats = _cluster(spec, 60, seed=3)
    store.points(lons, lats, YEAR, gap=64)
    server.clear_log()
    store.points(lons + 0.0001, lats, YEAR, gap=64)
    multi = [r for r in server.requests() if "," in (r["range"] or "")]
    assert multi, server.requests()
    assert all(r["connection_requests"] > 1 for r in multi), multi


def _count_landings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Read 4-band tiles as real-size ones are read, and count the bytes that landed.

    Real rows (~110 KB) land by default, and a window's long run of rows
    is cut into 8 MiB pieces, each a request of its own; a 4-band row is
    3.5 KB and a run of them 1 MB, so both limits scale down with it.
    """
    monkeypatch.setattr(placement, "_LAND", 0)
    monkeypatch.setattr(range_plan, "PART", 64 * 1024)
    landed: list[tuple[str, int]] = []
    get_into = SourceFiles.get_into

    async def spy(self: SourceFiles, url: str, start: int, end: int, *args: Any) -> None:
        landed.append((url, end - start))
        await get_into(self, url, start, end, *args)

    monkeypatch.setattr(SourceFiles, "get_into", spy)
    return landed


def test_windows_received_in_place_hold_the_same_bytes(
    served: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows received straight into the window (one view per row span, the bytes
    between spans thrown away) equal the Icechunk path and the source formula,
    with neighbours' pixels left to the neighbours."""
    landed = _count_landings(monkeypatch)
    store = open_store(str(served["out"]))
    plain = open_store(str(served["out"]), direct_reads=False)
    for spec, rows in ((served["list"][0], 300), (served["list"][3], served["list"][3].height)):
        bbox = _full_width_bbox(store, spec, rows=rows)
        store.tiles(YEAR, 31)
        landed.clear()
        got = store.region(bbox, YEAR, dequantise=False)
        into = sum(n for _, n in landed)
        assert into > got.embeddings.nbytes // 2, (into, got.embeddings.nbytes)
        want = plain.region(bbox, YEAR, dequantise=False)
        np.testing.assert_array_equal(got.embeddings.values, want.embeddings.values)
        np.testing.assert_array_equal(got.scales.values, want.scales.values)
        assert _check_region(served, store.region(bbox, YEAR), YEAR, every=3) > 1000


def test_big_endian_scales_never_land_as_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scales in the other byte order must be cast, so they are never received in place."""
    root = tmp_path / "tree"
    specs = make_tree(root, bbox=BBOX, years=(YEAR,), bands=4, manifest=False)
    for spec in specs:
        path = root / spec.scales_path
        np.save(path, np.load(path).astype(">f4"))
    write_manifest(root, specs)
    served = {"specs": {(s.year, s.name): s for s in specs}}
    landed = _count_landings(monkeypatch)
    with NginxServer(root) as server:
        _index(server, root, tmp_path / "index")
        store = open_store(str(tmp_path / "index"))
        bbox = (0.84, 49.84, 0.96, 49.96)
        got = store.region(bbox, YEAR, dequantise=False)
        assert landed, "the embeddings rows land in place"
        assert not [url for url, _ in landed if url.endswith("_scales.npy")]
        np.testing.assert_array_equal(
            got.scales.values,
            open_store(str(tmp_path / "index"), direct_reads=False)
            .region(bbox, YEAR, dequantise=False)
            .scales.values,
        )
        assert _check_region(served, store.region(bbox, YEAR), YEAR, every=3) > 1000
