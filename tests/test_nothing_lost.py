"""Nothing lost, nothing half-written (issue 19, docs/security.md "Nothing lost").

- a tile Icechunk would refuse (an empty ``(0, 0, bands)`` array) fails alone:
  the zone-year's good tiles are indexed and the report is printed;
- terminal escape sequences in a tile name never reach the terminal;
- ``region --out x.zarr`` / ``x.nc`` interrupted by Ctrl-C leaves no output;
- a local tree's symlinks leading outside it are skipped with a reason;
- the tiles-table cache stays within its bounds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tessera_vz.reader import open_store
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import make_tree

YEAR = 2024
BANDS = 4


def _cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "tessera_vz.cli", *args], capture_output=True,
                          text=True, timeout=300, env=env, **kw)  # type: ignore[call-overload]  # fmt: skip


def _manifest(path: Path, rows: list[tuple[float, float, str, str]]) -> None:
    names = ["year", "lon", "lat", "grid_path", "scales_path"]
    cols = list(zip(*[(YEAR, lon, lat, g, s) for lon, lat, g, s in rows], strict=True))
    types = [pa.int32(), pa.float64(), pa.float64(), pa.string(), pa.string()]
    schema = pa.schema(list(zip(names, types, strict=True)))
    pq.write_table(pa.table(dict(zip(names, map(list, cols), strict=True)), schema=schema), path)


def test_an_empty_tile_fails_alone_and_the_report_is_printed(tmp_path: Path) -> None:
    """Over nginx: a (0, 0, bands) tile fails; its zone-year's good tiles are indexed and read."""
    root, out = tmp_path / "tree", tmp_path / "index"
    specs = make_tree(root, bbox=(0.7, 49.9, 1.0, 50.0), years=(YEAR,), bands=BANDS,
                      manifest=False)  # fmt: skip
    empty, good = specs[0], specs[1:]
    np.save(root / empty.emb_path, np.zeros((0, 0, BANDS), np.int8))
    np.save(root / empty.scales_path, np.zeros((0, 0), np.float32))
    hostile = "grid_0.65_49.95\x1b]0;pwned\x07\x1b[2J"
    rows = [(s.lon, s.lat, s.emb_path, s.scales_path) for s in specs]
    rows.append((0.65, 49.95, f"{YEAR}/{hostile}/{hostile}.npy",
                 f"{YEAR}/{hostile}/{hostile}_scales.npy"))  # fmt: skip
    _manifest(tmp_path / "manifest.parquet", rows)
    with NginxServer(root) as server:
        run = _cli("index", server.url, "--out", str(out),
                   "--manifest", str(tmp_path / "manifest.parquet"))  # fmt: skip
        assert run.returncode == 1, run.stderr
        assert "Traceback" not in run.stderr
        assert f"indexed {len(good)}," in run.stderr and "failed 2" in run.stderr, run.stderr
        assert f"failed {YEAR} {empty.name}: " in run.stderr and "empty axis" in run.stderr
        # The escape sequences are shown as text, never sent to the terminal.
        assert "\x1b" not in run.stderr and "\x07" not in run.stderr
        assert "\\x1b]0;pwned\\x07" in run.stderr
        store = open_store(str(out))
        for s in good:
            lon, lat = s.lon, s.lat
            loc = store.locate(lon, lat, YEAR)
            expected = np.load(root / s.emb_path)[loc.row, loc.col].astype(np.float32)
            expected *= np.load(root / s.scales_path)[loc.row, loc.col]
            np.testing.assert_array_equal(store.point(lon, lat, YEAR), expected)


def test_region_out_interrupted_leaves_nothing(tmp_path: Path) -> None:
    """Ctrl-C during ``region --out x.zarr`` / ``x.nc``: no output, nothing that looks finished."""
    root, out = tmp_path / "tree", tmp_path / "index"
    make_tree(root, bbox=(0.7, 49.7, 1.0, 50.0), years=(YEAR,), bands=BANDS, manifest=False)
    assert _cli("index", str(root), "--out", str(out)).returncode == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for suffix in ("zarr", "nc"):
        target = tmp_path / f"x.{suffix}"
        cmd = [sys.executable, "-m", "tessera_vz.cli", "region", "0.7", "49.7", "1.0", "50.0",
               "--store", str(out), "--year", str(YEAR), "--out", str(target),
               "--allow-local-sources"]  # fmt: skip
        # A Ctrl-C that lands as the write finishes may be swallowed by Python (a
        # KeyboardInterrupt raised inside a weakref callback is only printed): then the run
        # completes, and the output must be whole. Either way nothing half-written may stay;
        # at least one attempt must really have been interrupted.
        interrupted = False
        for _attempt in range(3):
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)  # fmt: skip
            deadline = time.monotonic() + 120
            while not any(p.name.startswith(f".x.{suffix}") for p in tmp_path.iterdir()):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the output was never started"
                time.sleep(0.01)
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=120)
            assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".x.{suffix}")]
            if proc.returncode == 130:
                assert not target.exists(), f"{target} exists after Ctrl-C"
                interrupted = True
                break
            assert proc.returncode == 0, stderr
            import xarray as xr

            with xr.open_dataset(target) as whole:  # finished before the signal: complete
                assert whole.sizes["x"] > 0 and whole.sizes["y"] > 0
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        assert interrupted, "no attempt was interrupted before the output was complete"


def test_the_table_cache_is_bounded_and_keeps_what_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many snapshots cached: files and bytes stay within bounds, least recently used go first."""
    import xarray as xr

    from tessera_vz.reader import table_cache

    monkeypatch.setenv("TESSERA_VZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(table_cache, "MAX_FILES", 5)
    names = np.array([f"grid_0.{i:02d}_49.95" for i in range(50)])
    table = xr.Dataset({"height": ("tile", np.arange(50, dtype=np.int32))}, coords={"tile": names})
    table_cache.save("s3://index/utm31", "snap-hot", table)
    for i in range(20):
        table_cache.save("s3://index/utm31", f"snap-{i:02d}", table)
        # The hot snapshot is read between saves (a hit touches it): it must survive.
        assert table_cache.load("s3://index/utm31", "snap-hot") is not None
        time.sleep(0.01)
    files = sorted((tmp_path / "cache" / "tables").rglob("*.npz"))
    assert len(files) == 5, files
    kept = {f.stem for f in files}
    assert "snap-hot" in kept and "snap-19" in kept and "snap-00" not in kept
    cached = table_cache.load("s3://index/utm31", "snap-19")
    assert cached is not None and list(cached.tile) == list(names)
    size = files[0].stat().st_size
    monkeypatch.setenv("TESSERA_VZ_CACHE_MAX_MB", str(2.5 * size / 1024 / 1024))
    table_cache.save("s3://index/utm31", "snap-new", table)
    files = sorted((tmp_path / "cache" / "tables").rglob("*.npz"))
    assert len(files) == 2 and "snap-new" in {f.stem for f in files}
    assert not list((tmp_path / "cache").rglob(".*"))  # no partial file left


def test_symlinks_out_of_a_local_tree_are_skipped_with_a_reason(tmp_path: Path) -> None:
    """A tile linked to a file outside SOURCE is skipped (reason in the report) unless asked."""
    root = tmp_path / "tree"
    specs = make_tree(root, bbox=(0.7, 49.9, 1.0, 50.0), years=(YEAR,), bands=BANDS,
                      manifest=False)  # fmt: skip
    outside, inside = specs[0], specs[1]
    secret = tmp_path / "secret"
    secret.mkdir()
    target = secret / "not-a-tile.npy"
    (root / outside.emb_path).rename(target)
    (root / outside.emb_path).symlink_to(target)
    # A link that stays inside the tree is harmless and kept.
    moved = root / "elsewhere.npy"
    (root / inside.emb_path).rename(moved)
    (root / inside.emb_path).symlink_to(moved)
    run = _cli("index", str(root), "--out", str(tmp_path / "a"), "--json")
    assert run.returncode == 1, run.stderr
    doc = json.loads(run.stdout)
    assert doc["indexed"] == len(specs) - 1
    [failed] = doc["failed"]
    assert failed["tile"] == outside.name and "outside SOURCE" in failed["reason"]
    assert "--follow-symlinks" in failed["reason"]
    run = _cli("index", str(root), "--out", str(tmp_path / "b"), "--json", "--follow-symlinks")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["indexed"] == len(specs)
