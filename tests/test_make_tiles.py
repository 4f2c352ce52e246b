"""The synthetic tile generator and the nginx test server behave as upstream does.

Everything else is tested against these fixtures, so they are checked here
against first principles: shapes from the geometry module, values from the
closed formulas, manifest from ``os.stat``, and HTTP semantics from a real
nginx. The nginx tests fail (never skip) when nginx is missing.
"""

from __future__ import annotations

import email.utils
import importlib.util
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow.parquet as pq
import pytest

from tessera_vz.core.geometry import tile_grids
from tessera_vz.core.layout import source_paths, tile_name
from tessera_vz.mirror import nginx as nginx_mod
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import (
    INVALID_SCALES,
    MANIFEST_SCHEMA,
    TileSpec,
    cell_centres,
    embedding_values,
    make_tree,
    scale_values,
    write_manifest,
)

BBOX = (0.72, 49.82, 0.98, 49.98)  # 3 x 2 cells in UTM 31N
UPSTREAM_COLUMNS = [
    "version",
    "variant",
    "year",
    "lon",
    "lat",
    "directory",
    "grid_path",
    "scales_path",
    "grid_mtime",
    "scales_mtime",
    "grid_size",
    "scales_size",
    "lon_i",
    "lat_i",
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[TileSpec]]:
    root = tmp_path_factory.mktemp("tree")
    return root, make_tree(root, bbox=BBOX, years=(2024, 2025), bands=4)


@pytest.fixture(scope="module")
def server(tree: tuple[Path, list[TileSpec]]):  # type: ignore[no-untyped-def]
    with NginxServer(tree[0]) as srv:
        yield srv


def _expected(spec: TileSpec) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(spec.height)
    c = np.arange(spec.width)
    b = np.arange(spec.bands)
    emb = embedding_values(spec.year, spec.lon, spec.lat, r[:, None, None], c[None, :, None], b)
    if spec.scales_per_band:
        sc = scale_values(spec.year, spec.lon, spec.lat, r[:, None, None], c[None, :, None], b)
    else:
        sc = scale_values(spec.year, spec.lon, spec.lat, r[:, None], c[None, :])
    return emb, sc


def test_cell_centres() -> None:
    assert cell_centres((0.8, 49.9, 0.9, 50.0)) == [(0.85, 49.95)]
    got = cell_centres(BBOX)
    assert got == [(lo, la) for la in (49.85, 49.95) for lo in (0.75, 0.85, 0.95)]
    assert len(cell_centres((-1.0, -1.0, 1.0, 1.0))) == 400
    assert (-0.05, -0.05) in cell_centres((-0.1, -0.1, 0.0, 0.0))


def test_embedding_values_broadcast_and_formula() -> None:
    rng = np.random.default_rng(0)
    rows, cols, bands = (rng.integers(0, 1200, 50) for _ in range(3))
    lon, lat, year = -71.35, -33.45, 2019
    got = embedding_values(year, lon, lat, rows, cols, bands)
    lon_i, lat_i = round(lon * 100), round(lat * 100)
    want = ((lon_i * 3 + lat_i * 5 + year * 11 + rows * 7 + cols * 13 + bands * 17) % 251) - 125
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, want.astype(np.int8))
    assert embedding_values(year, lon, lat, 3, np.arange(5)[:, None], np.arange(4)).shape == (5, 4)


def test_scale_values_valid_and_invalid_patch() -> None:
    r = np.arange(10)[:, None]
    c = np.arange(20)[None, :]
    sc = scale_values(2024, 0.85, 49.95, r, c)
    assert sc.dtype == np.float32 and sc.shape == (10, 20)
    np.testing.assert_array_equal(sc[:2, :6], np.broadcast_to(INVALID_SCALES, (2, 6)))
    valid = np.isfinite(sc) & (sc > 0) & (sc < 1)
    assert not valid[:2, :6].any() and valid[2:].all() and valid[:, 6:].all()
    clean = scale_values(2024, 0.85, 49.95, r, c, invalid_patch=False)
    assert ((clean > 0) & (clean < 1)).all()


def test_tree_shapes_and_values(tree: tuple[Path, list[TileSpec]]) -> None:
    root, specs = tree
    assert len(specs) == 12
    g = tile_grids([s.lon for s in specs], [s.lat for s in specs])
    for i, spec in enumerate(specs):
        assert spec.name == tile_name(spec.lon, spec.lat)
        assert (spec.emb_path, spec.scales_path) == source_paths(spec.year, spec.name)
        assert (spec.height, spec.width, spec.epsg) == (g.height[i], g.width[i], g.epsg[i])
        emb = np.load(root / spec.emb_path)
        sc = np.load(root / spec.scales_path)
        assert emb.dtype == np.int8 and emb.flags.c_contiguous
        assert emb.shape == (g.height[i], g.width[i], 4)
        assert sc.dtype == np.float32 and sc.shape == (g.height[i], g.width[i])
        want_emb, want_sc = _expected(spec)
        np.testing.assert_array_equal(emb, want_emb)
        np.testing.assert_array_equal(sc, want_sc)
        with open(root / spec.emb_path, "rb") as f:
            assert np.lib.format.read_magic(f) == (1, 0)
            np.lib.format.read_array_header_1_0(f)
            assert f.tell() % 64 == 0


def test_scales_per_band(tmp_path: Path) -> None:
    specs = make_tree(tmp_path, centres=[(-0.05, 51.45)], bands=3, scales_per_band=True)
    (spec,) = specs
    sc = np.load(tmp_path / spec.scales_path)
    assert sc.shape == (spec.height, spec.width, 3)
    np.testing.assert_array_equal(sc, _expected(spec)[1])
    assert np.isnan(sc[0, 0]).all() and (sc[1, 5] == 2.5).all()
    assert spec.epsg == 32630


def test_manifest(tree: tuple[Path, list[TileSpec]]) -> None:
    root, specs = tree
    table = pq.read_table(root / "manifest.parquet")
    assert table.schema.names == UPSTREAM_COLUMNS
    assert table.schema.equals(MANIFEST_SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == len(specs)
    for row, spec in zip(rows, specs, strict=True):
        g, s = os.stat(root / spec.emb_path), os.stat(root / spec.scales_path)
        assert row["version"] == "v1"
        assert row["variant"] == "global_0.1_degree_representation"
        assert row["directory"] == f"{spec.year}/{spec.name}"
        assert (row["grid_path"], row["scales_path"]) == (spec.emb_path, spec.scales_path)
        assert (row["grid_size"], row["scales_size"]) == (g.st_size, s.st_size)
        assert row["grid_size"] == 128 + spec.height * spec.width * 4
        assert row["scales_size"] == 128 + spec.height * spec.width * 4
        assert (row["grid_mtime"], row["scales_mtime"]) == (g.st_mtime, s.st_mtime)
        assert (row["lon_i"], row["lat_i"]) == (round(spec.lon * 100), round(spec.lat * 100))
        assert (row["year"], row["lon"], row["lat"]) == (spec.year, spec.lon, spec.lat)


def test_manifest_url_base_and_defects(tmp_path: Path) -> None:
    specs = make_tree(
        tmp_path, centres=[(0.85, 49.95), (0.95, 49.95)], bands=1, url_base="https://m.example/t/"
    )
    rows = pq.read_table(tmp_path / "manifest.parquet").to_pylist()
    assert rows[0]["grid_path"] == "https://m.example/t/2024/grid_0.85_49.95/grid_0.85_49.95.npy"
    assert rows[1]["scales_path"].endswith("/t/2024/grid_0.95_49.95/grid_0.95_49.95_scales.npy")
    # A manifest row for a missing object, and a tile missing from the manifest.
    ghost = TileSpec(
        2024, 5.05, 5.05, "grid_5.05_5.05", 10, 10, 1, 32631, *source_paths(2024, "grid_5.05_5.05")
    )
    out = write_manifest(tmp_path, [specs[0], ghost], path=tmp_path / "m2.parquet")
    rows = pq.read_table(out).to_pylist()
    assert [r["directory"] for r in rows] == ["2024/grid_0.85_49.95", "2024/grid_5.05_5.05"]
    assert rows[1]["grid_size"] == 0 and np.isnan(rows[1]["grid_mtime"])


def test_sparse(tmp_path: Path) -> None:
    (spec,) = make_tree(tmp_path, centres=[(0.85, 49.95)], bands=128, sparse=True)
    path = tmp_path / spec.emb_path
    with open(path, "rb") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        offset = f.tell()
    assert (shape, fortran, dtype) == ((spec.height, spec.width, 128), False, np.dtype(np.int8))
    assert path.stat().st_size == offset + spec.height * spec.width * 128
    assert path.stat().st_blocks * 512 < 1 << 20  # a hole, not ~100 MB of zeros
    sc = np.load(tmp_path / spec.scales_path, mmap_mode="r")
    assert sc.shape == (spec.height, spec.width) and sc.dtype == np.float32
    assert not sc[-1].any()  # sparse content reads as zeros


def test_nginx_range_and_precondition(
    tree: tuple[Path, list[TileSpec]], server: NginxServer
) -> None:
    root, specs = tree
    spec = specs[3]
    path = root / spec.emb_path
    data = path.read_bytes()
    url = server.url + spec.emb_path
    assert server.url == f"http://127.0.0.1:{server.port}/"
    server.clear_log()

    req = urllib.request.Request(url, headers={"Range": "bytes=1000-1199"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 206
        assert resp.read() == data[1000:1200]
        assert resp.headers["Content-Range"] == f"bytes 1000-1199/{len(data)}"
        etag = resp.headers["ETag"]

    before = email.utils.formatdate(path.stat().st_mtime - 3600, usegmt=True)
    req = urllib.request.Request(url, headers={"Range": "bytes=0-9", "If-Unmodified-Since": before})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 412
    err.value.close()

    after = email.utils.formatdate(path.stat().st_mtime + 3600, usegmt=True)
    req = urllib.request.Request(url, headers={"Range": "bytes=0-9", "If-Match": etag})
    req.add_header("If-Unmodified-Since", after)
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 206 and resp.read() == data[:10]

    log = server.requests(min_count=3)
    assert [(r["method"], r["status"]) for r in log] == [("GET", 206), ("GET", 412), ("GET", 206)]
    assert all(r["uri"] == "/" + spec.emb_path for r in log)
    assert log[0]["range"] == "bytes=1000-1199" and log[0]["body_bytes_sent"] == 200
    assert log[0]["if_match"] is None and log[0]["if_unmodified_since"] is None
    assert log[1]["if_unmodified_since"] == before
    assert log[2]["if_match"] == etag and log[2]["bytes_sent"] > 10
    assert log[0]["user_agent"].startswith("Python-urllib")
    assert isinstance(log[0]["request_time"], float)
    server.clear_log()
    assert server.requests() == []


def test_nginx_missing_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(nginx_mod.shutil, "which", lambda name: None)
    monkeypatch.setattr(nginx_mod, "NGINX_FALLBACK", str(tmp_path / "no-nginx"))
    with pytest.raises(RuntimeError, match="apt-get install nginx-light"):
        NginxServer(tmp_path).start()


def _script() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "scripts" / "make_tiles.py"
    spec = importlib.util.spec_from_file_location("make_tiles_script", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = [str(out), "--bbox", "0.8", "49.9", "0.9", "50.0", "--years", "2024,2025"]
    assert _script().main([*argv, "--bands", "2", "--url-base", "https://x/"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tiles"] == 2 and summary["seconds"] >= 0
    files = list(out.rglob("*.npy"))
    assert summary["bytes"] == sum(p.stat().st_size for p in files) and len(files) == 4
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert rows[1]["grid_path"] == "https://x/2025/grid_0.85_49.95/grid_0.85_49.95.npy"
