"""The viewer defends itself (issue 19, docs/security.md "Viewer").

Every request to the viewer is untrusted. The viewer runs under uvicorn on
loopback over an index of tiles served by nginx (``test_serve_api``'s world):

- size limits hold on the real output grid of a long thin box;
- a ``Host`` other than a loopback name (DNS rebinding) gets a 400;
- error answers name no absolute local path;
- 60 previews in flight leave ``/api/info`` answering promptly, and a full
  heavy queue answers 503 with ``Retry-After``;
- download folders do not survive a double Ctrl-C (the next viewer sweeps them).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tessera_vz.core.ports import fresh_port
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.reader.grids import grid_for_bbox
from tessera_vz.serve import Limits, create_app
from tessera_vz.testing.tiles import make_tree
from tests.test_serve_api import LIMITS, get, running, world  # noqa: F401


def request(base: str, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` from ``base`` with an explicit ``Host`` header (or the default)."""
    addr, port = base.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(addr, int(port), timeout=120)
    try:
        conn.putrequest("GET", path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def lonlat_estimate(bbox: tuple[float, float, float, float]) -> float:
    """The old estimate: the box's area in 10 m pixels (what main checked)."""
    w, s, e, n = bbox
    mid = math.radians((s + n) / 2)
    return (e - w) * 111_320 * math.cos(mid) * (n - s) * 110_574 / 100


@pytest.fixture(scope="module")
def base(world: dict[str, Any]) -> Any:  # noqa: F811
    with running(create_app(open_store(str(world["out"])), limits=LIMITS)) as url:
        yield url


# -- limits on the output grid -------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "bbox", "limit"),
    [
        ("preview.png", (0.0, 49.999, 1.0, 50.0), LIMITS.preview_pixels),
        ("region", (0.7, 49.9995, 1.0, 50.0), LIMITS.region_pixels),
    ],
)
def test_long_thin_box_is_refused_by_its_grid(
    base: str, endpoint: str, bbox: tuple[float, float, float, float], limit: int
) -> None:
    """A box whose area is under the limit but whose output grid is over it gets a 413."""
    grid, _ = grid_for_bbox(bbox)
    assert lonlat_estimate(bbox) < limit < grid.size  # the trap: area says yes, grid says no
    status, headers, body = get(f"{base}/api/{endpoint}?bbox={','.join(map(str, bbox))}&year=2024")
    assert status == 413, body[:200]
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert f"{grid.size:,}" in error and "over the limit" in error


def test_a_box_under_the_limit_is_read_on_the_grid_that_was_checked(base: str) -> None:
    bbox = (0.7, 49.7, 0.73, 49.73)
    grid, _ = grid_for_bbox(bbox)
    assert grid.size < LIMITS.preview_pixels
    status, headers, body = get(f"{base}/api/preview.png?bbox={','.join(map(str, bbox))}&year=2024")
    assert status == 200, body[:200]
    assert headers["x-tessera-shape"] == f"{grid.height},{grid.width}"


# -- Host ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]", "LOCALHOST"])
def test_loopback_names_are_answered(base: str, host: str) -> None:
    port = base.rsplit(":", 1)[1]
    for name in (host, f"{host}:{port}"):
        status, _, body = request(base, "/api/info", host=name)
        assert status == 200, (name, body[:200])


@pytest.mark.parametrize(
    "host",
    ["attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", "localhost:x",
     "[::1", "", "127.0.0.2"],
)  # fmt: skip
def test_other_hosts_are_refused(base: str, host: str) -> None:
    """A DNS-rebinding page's requests name its own host: refused before any endpoint runs."""
    for path in ("/api/info", "/api/point?lon=0.81&lat=49.93&year=2024", "/", "/static/app.js"):
        status, headers, body = request(base, path, host=host)
        assert status == 400, (host, path, status)
        assert headers["content-type"] == "application/json" and "error" in json.loads(body)


def test_the_host_given_is_answered_and_other_binds_take_any_host(world: dict[str, Any]) -> None:  # noqa: F811
    store = open_store(str(world["out"]))
    with running(create_app(store, limits=LIMITS, host="127.0.0.2")) as url:
        assert request(url, "/api/info", host="127.0.0.2:1234")[0] == 200
        assert request(url, "/api/info", host="attacker.example")[0] == 400
    with running(create_app(store, limits=LIMITS, host="0.0.0.0")) as url:
        assert request(url, "/api/info", host="viewer.lan")[0] == 200


# -- no local path in errors -----------------------------------------------------------


def test_errors_name_no_local_path(tmp_path: Path) -> None:
    """Source errors of a local tree name the tile, never where the tree or index lies."""
    root, out = tmp_path / "secret-src", tmp_path / "secret-index"
    specs = make_tree(root, centres=[(0.75, 49.75)], years=(2024,), bands=8)
    assert not run_index(IndexOptions(source=str(root), out=str(out))).failed
    tile = specs[0].name
    path = "/api/point?lon=0.75&lat=49.75&year=2024"
    # A copy of the index: the permission its maker's run remembered does not travel with it.
    copy = tmp_path / "secret-copy"
    shutil.copytree(out, copy)
    with running(create_app(open_store(str(copy)), limits=LIMITS)) as url:
        status, _, body = get(url + path)  # not authorised: a file:// source
        assert status == 400
        error = json.loads(body)["error"]
        assert str(tmp_path) not in error and "file://" not in error, error
        assert tile in error or "local" in error
    for npy in root.rglob("*.npy"):
        npy.unlink()
    with running(create_app(open_store(str(out), allow_local_sources=True), limits=LIMITS)) as url:
        status, _, body = get(url + path)  # authorised, but the file is gone
        assert status in (404, 502), body
        error = json.loads(body)["error"]
        assert str(tmp_path) not in error and "secret-src" not in error, error
        assert tile in error
        status, _, body = get(url + "/api/info")
        assert status == 200


# -- heavy work never starves light requests -----------------------------------------------


def _fire(url: str, n: int) -> tuple[list[threading.Thread], list[tuple[int, dict[str, str]]]]:
    results: list[tuple[int, dict[str, str]]] = []

    def one() -> None:
        status, headers, _ = get(url)
        results.append((status, headers))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads, results


def test_info_answers_while_60_previews_are_in_flight(world: dict[str, Any]) -> None:  # noqa: F811
    limits = Limits(preview_pixels=5_000_000, heavy_requests=1, heavy_queue=64)
    with running(create_app(open_store(str(world["out"])), limits=limits)) as url:
        box = f"{url}/api/preview.png?bbox=0.7,49.7,0.8,49.8&year=2024"
        assert get(box)[0] == 200  # warm (tables, manifests)
        threads, results = _fire(box, 60)
        time.sleep(1.0)  # all 60 sent and waiting for their turn
        assert sum(t.is_alive() for t in threads) > 40
        t0 = time.perf_counter()
        status, _, body = get(f"{url}/api/info")
        elapsed = time.perf_counter() - t0
        assert status == 200 and json.loads(body)["years"]
        status, _, _ = get(f"{url}/api/point?lon=0.81&lat=49.93&year=2024")
        light = time.perf_counter() - t0
        for t in threads:
            t.join(timeout=300)
    print(f"/api/info in {elapsed:.3f} s, info+point {light:.3f} s with 60 previews in flight")
    assert elapsed < 2.0 and light < 4.0
    assert [s for s, _ in results] == [200] * 60


def test_a_full_heavy_queue_answers_503_with_retry_after(world: dict[str, Any]) -> None:  # noqa: F811
    limits = Limits(preview_pixels=5_000_000, heavy_requests=1, heavy_queue=1)
    with running(create_app(open_store(str(world["out"])), limits=limits)) as url:
        threads, results = _fire(f"{url}/api/preview.png?bbox=0.7,49.7,0.8,49.8&year=2024", 8)
        for t in threads:
            t.join(timeout=300)
    statuses = sorted(s for s, _ in results)
    assert statuses.count(200) >= 2 and 503 in statuses, statuses
    assert all(h.get("retry-after") == "5" for s, h in results if s == 503)


# -- downloads leave nothing behind ------------------------------------------------------


def _serve(out: Path, port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "tessera_vz.cli", "serve", str(out), "--port", str(port),
           "--max-region-pixels", "50000000"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            if get(f"http://127.0.0.1:{port}/api/info")[0] == 200:
                return proc
        except OSError:
            pass
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "serve did not start"
        time.sleep(0.2)


def _leftovers(tmp: Path) -> list[Path]:
    return [p for p in tmp.rglob("*") if "region" in p.name and p.exists()]


def test_download_files_do_not_survive_a_double_ctrl_c(
    world: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": os.pathsep.join(sys.path)}
    port = fresh_port()
    proc = _serve(world["out"], port, env)
    try:
        url = f"http://127.0.0.1:{port}/api/region?bbox=0.7,49.7,0.9,49.9&year=2024&format=zarr"
        threading.Thread(target=lambda: _quiet_get(url), daemon=True).start()
        deadline = time.monotonic() + 60
        while not _leftovers(tmp):  # the download is being written
            assert time.monotonic() < deadline, "no download folder appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # Whatever the first viewer left, the next one removes on starting...
    port = fresh_port()
    proc = _serve(world["out"], port, env)
    assert not _leftovers(tmp), _leftovers(tmp)
    # ...and a viewer stopped by one Ctrl-C leaves no folder of its own.
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert not [p for p in tmp.rglob("run-*") if p.is_dir()]
    shutil.rmtree(tmp, ignore_errors=True)


def _quiet_get(url: str) -> None:
    with contextlib.suppress(OSError):
        get(url)
