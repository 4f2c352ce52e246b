"""Mirrors that serve one range per request: nginx ``max_ranges 1``, S3 (moto), local files.

The first whole-file answer to a multi-range request teaches the reader
that the origin serves single ranges; it never reads that body, never asks
that origin for several ranges again (in this process, or in a later one:
the cache directory remembers it), and its values equal a multi-range
mirror's. Reads of local files and S3 hold memory bounded by the batch,
and repeated calls do not grow it.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tessera_vz.core import range_memory
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.s3 import MotoS3
from tessera_vz.testing.tiles import TileSpec, make_tree
from tessera_vz.testing.tls import TestCA

YEAR = 2024
BBOX = (0.8, 49.8, 1.0, 50.0)  # 2 x 2 cells in UTM zone 31 north


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[TileSpec]]:
    root = tmp_path_factory.mktemp("single-range-tree")
    return root, make_tree(root, bbox=BBOX, years=(YEAR,), bands=4)


def _points(specs: list[TileSpec], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points clustered around each tile's centre (rows apart, some in one row)."""
    rng = np.random.default_rng(seed)
    lon = np.concatenate([s.lon + rng.normal(0, 0.01, n) for s in specs])
    lat = np.concatenate([s.lat + rng.normal(0, 0.01, n) for s in specs])
    return lon, lat


def _index(source: str, root: Path, out: Path) -> None:
    opts = IndexOptions(source=source, out=str(out), manifest=str(root / "manifest.parquet"))
    assert run_index(opts).exit_code == 0


def _multi(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in requests if "," in (r["range"] or "")]


READ_IN_CHILD = """
import json, sys
import numpy as np
from tessera_vz.reader import open_store
out, (lon, lat, bbox) = sys.argv[1], [json.loads(a) for a in sys.argv[2:]]
store = open_store(out)
values = store.points(np.array(lon), np.array(lat), 2024)
region = store.region(tuple(bbox), 2024, dequantise=False)
np.save(sys.stdout.buffer, values)
"""


def test_single_range_mirror_reads_as_a_multi_range_one_and_remembers_it(
    tree: tuple[Path, list[TileSpec]], https: TestCA, tmp_path: Path
) -> None:
    root, specs = tree
    lon, lat = _points(specs, 80, seed=3)
    bbox = (0.86, 49.86, 0.94, 49.94)  # all four tiles
    with NginxServer(root, tls=https) as multi:
        _index(multi.url, root, tmp_path / "multi")
        want = open_store(str(tmp_path / "multi")).points(lon, lat, YEAR)
        want_region = open_store(str(tmp_path / "multi")).region(bbox, YEAR, dequantise=False)
    assert np.isfinite(want).any()
    with NginxServer(root, tls=https, max_ranges=1) as single:
        _index(single.url, root, tmp_path / "single")
        store = open_store(str(tmp_path / "single"))
        store.tiles(YEAR, 31)
        single.clear_log()
        np.testing.assert_array_equal(store.points(lon, lat, YEAR), want)
        got = store.region(bbox, YEAR, dequantise=False)
        np.testing.assert_array_equal(got.embeddings.values, want_region.embeddings.values)
        np.testing.assert_array_equal(got.scales.values, want_region.scales.values)
        log = single.requests()
        whole = [r for r in log if r["status"] == 200]
        # The first multi-range request went alone and was answered with the
        # whole file, whose body was not read; after it, single ranges only.
        assert len(whole) == 1 and len(_multi(log)) == 1, _multi(log)
        assert all(r["status"] == 206 for r in log if r is not whole[0]), log
        assert range_memory.single_range(single.url)
        doc = json.loads(range_memory_file().read_text())
        assert range_memory.origin_key(single.url) in doc["origins"]

        # A new process (same cache directory) sends that origin no multi-range request.
        single.clear_log()
        child = subprocess.run(
            [sys.executable, "-c", READ_IN_CHILD, str(tmp_path / "single"),
             json.dumps(lon.tolist()), json.dumps(lat.tolist()), json.dumps(bbox)],
            capture_output=True, check=True,
        )  # fmt: skip
        values = np.load(io.BytesIO(child.stdout))
        np.testing.assert_array_equal(values, want)
        log = single.requests()
        assert log and not _multi(log) and all(r["status"] == 206 for r in log), log


def test_single_range_region_requests_are_bounded_by_the_files_it_touches(
    tmp_path_factory: pytest.TempPathFactory, https: TestCA, tmp_path: Path
) -> None:
    """A region where four tiles meet, on a single-range origin, costs a few requests per
    file, not one per row: each tile's rows are ~18 KB apart (16 bands), so a plan of one
    request per row span (~100 rows per tile) would send hundreds. Values equal a
    multi-range mirror's, and no whole-file answer follows the first."""
    root = tmp_path_factory.mktemp("single-range-corner")
    specs = make_tree(root, bbox=BBOX, years=(YEAR,), bands=16)
    bbox = (0.895, 49.895, 0.905, 49.905)  # ~70 x 110 pixels around the corner of 4 cells
    with NginxServer(root, tls=https) as multi:
        _index(multi.url, root, tmp_path / "multi")
        want = open_store(str(tmp_path / "multi")).region(bbox, YEAR, dequantise=False)
    with NginxServer(root, tls=https, max_ranges=1) as single:
        _index(single.url, root, tmp_path / "single")
        store = open_store(str(tmp_path / "single"))
        lon, lat = _points(specs, 5, seed=11)
        store.points(lon, lat, YEAR)  # the origin's lesson (one whole-file answer)
        assert range_memory.single_range(single.url)
        single.clear_log()
        got = store.region(bbox, YEAR, dequantise=False)
        log = single.requests()
    np.testing.assert_array_equal(got.embeddings.values, want.embeddings.values)
    np.testing.assert_array_equal(got.scales.values, want.scales.values)
    assert np.isfinite(got.scales.values).any()
    files = {r["uri"] for r in log}
    rows = got.sizes["y"]
    assert len(files) == 8, files  # embeddings and scales of the four tiles
    assert all(r["status"] == 206 and "," not in (r["range"] or "") for r in log), log
    # Each file's row spans merge across the columns between them: at most two
    # requests a file, where one per row would be ~8 x rows.
    assert len(log) <= 2 * len(files) < rows, (len(log), rows, log)


def range_memory_file() -> Path:
    base = range_memory.cache_dir()
    assert base is not None
    return base / range_memory.FILE


def test_s3_reads_single_ranges_with_the_values_of_nginx(
    tree: tuple[Path, list[TileSpec]], https: TestCA, s3_env: MotoS3, tmp_path: Path
) -> None:
    root, specs = tree
    lon, lat = _points(specs, 60, seed=5)
    with NginxServer(root, tls=https) as multi:
        _index(multi.url, root, tmp_path / "multi")
        want = open_store(str(tmp_path / "multi")).points(lon, lat, YEAR)
    s3_env.upload_tree(root, "single", "tessera/v1")
    source = "s3://single/tessera/v1"
    opts = IndexOptions(
        source=source, out=str(tmp_path / "s3"), manifest=f"{source}/manifest.parquet"
    )
    assert run_index(opts).exit_code == 0
    store = open_store(str(tmp_path / "s3"))
    for _ in range(2):
        np.testing.assert_array_equal(store.points(lon, lat, YEAR), want)


def test_local_points_memory_is_bounded_and_does_not_grow(
    tree: tuple[Path, list[TileSpec]], tmp_path: Path
) -> None:
    """Many points over local files: one read call per file, memory bounded by the
    answer, and the same over repeated calls (tracemalloc; generous bounds)."""
    root, specs = tree
    _index(root.as_uri(), root, tmp_path / "local")
    store = open_store(str(tmp_path / "local"), allow_local_sources=True)
    lon, lat = _points(specs, 5000, seed=7)
    first = store.points(lon, lat, YEAR)  # warm: tables, connections, caches
    tracemalloc.start()
    try:
        peaks, kept = [], []
        for _ in range(4):
            tracemalloc.reset_peak()
            np.testing.assert_array_equal(store.points(lon, lat, YEAR), first)
            now, peak = tracemalloc.get_traced_memory()
            peaks.append(peak)
            kept.append(now)
    finally:
        tracemalloc.stop()
    # Locating 20,000 points costs ~2 kB each (the tiles-table facts per point);
    # the ranges' bytes are cut out as they arrive, so nothing scales with them.
    assert max(peaks) < 4096 * lon.size + (8 << 20), peaks
    assert kept[-1] - kept[0] < 2 << 20, kept  # no growth across calls


def test_memory_expires_survives_garbage_and_can_be_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "https://mirror.example.org:443/tessera/v1/"
    assert not range_memory.single_range(url)
    range_memory.learn(url)
    assert range_memory.single_range("https://MIRROR.example.org/other/")  # origin, default port
    assert not range_memory.single_range("http://mirror.example.org/tessera/v1/")
    path = range_memory_file()
    doc = json.loads(path.read_text())
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=range_memory.REMEMBER_DAYS + 1)).isoformat()
    doc["origins"]["https://old.example.org:443"] = old
    path.write_text(json.dumps(doc))
    monkeypatch.setenv("TESSERA_VZ_CACHE", str(path.parent))  # same folder: read again
    range_memory._known.clear()
    assert range_memory.single_range(url)
    assert not range_memory.single_range("https://old.example.org/")  # expired
    path.write_text("{not json")
    range_memory._known.clear()
    assert not range_memory.single_range(url)  # unreadable: learnt again, never an error
    monkeypatch.setenv("TESSERA_VZ_CACHE", "off")
    range_memory.learn("https://memory-only.example.org/")
    assert range_memory.single_range("https://memory-only.example.org/x")
    assert not list(tmp_path.glob("**/memory-only*"))
