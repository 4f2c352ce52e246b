"""Reader benchmark: single-point latency and bytes, points/s, region throughput.

A script a person runs (not a timed test). One nginx serves a sparse tree of
real-size tiles (128 bands; data regions are holes that read as zeros, which
costs nothing on disk but moves real bytes), and in one run it measures:

* the request-rate ceiling: small ranged GETs/s a client on this machine gets
  from that nginx (obstore, concurrent), the physical limit for points;
* single-point latency and bytes on the wire, warm and cold (new process), for
  (a) this reader, (b) ``xr.open_zarr`` on the repo with icechunk's default
  settings, (c) fetching the whole tile file as upstream's npy path does;
* points/s for points spread 1-2 per tile over 1,000 tiles, and for points
  clustered 50+ per tile, against the ceiling;
* region read throughput for full-width windows (300 rows, and a whole
  tile's height) against one sequential ranged read of the same bytes (the
  physical limit);
* for clustered points and the region, the same reads through the Icechunk
  store only (``direct_reads=False``: one request per virtual chunk).

Prints a table and writes ``benchmarks/results/read_points.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import icechunk as ic
import numpy as np
import obstore
import xarray as xr
from obstore.store import HTTPStore
from rich.console import Console
from rich.table import Table
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.reader.geometry import unproject

from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import make_tree

console = Console()
YEAR = 2024


def centres(n: int) -> list[tuple[float, float]]:
    lons = [round(0.05 + 0.1 * i, 2) for i in range(60)]
    out: list[tuple[float, float]] = []
    row = 0
    while len(out) < n:
        out.extend((lon, round(45.05 + 0.1 * row, 2)) for lon in lons[: n - len(out)])
        row += 1
    return out


def wire(server: NginxServer) -> tuple[int, int]:
    reqs = [r for r in server.requests() if r["uri"].endswith(".npy")]
    return len(reqs), sum(r["bytes_sent"] for r in reqs)


async def ceiling(url: str, paths: list[str], n: int, conc: int = 64) -> float:
    store = HTTPStore.from_url(url, client_options={"allow_http": True})
    rng = np.random.default_rng(0)
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            start = 128 + int(rng.integers(0, 10_000_000))
            await obstore.get_range_async(store, paths[i % len(paths)], start=start, length=128)

    t = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - t)


_COLD = """
import json, sys, time
import dask.array, xarray, icechunk  # imports are not part of the lookup
from tessera_vz.reader import open_store
t = time.perf_counter()
store = open_store(sys.argv[1])
store.point(float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def cold_point(index: Path, lon: float, lat: float) -> float:
    """Seconds a new process spends on its first point, imports excluded."""
    proc = subprocess.run(
        [sys.executable, "-c", _COLD, str(index), str(lon), str(lat), str(YEAR)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    if not proc.stdout.strip():
        raise RuntimeError(f"cold point failed ({proc.returncode}): {proc.stderr[-2000:]}")
    if proc.returncode != 0:
        console.print(f"[yellow]cold-point process exited {proc.returncode} after answering[/]")
    return float(json.loads(proc.stdout)["seconds"])


def measure(
    src: Path, specs: list[Any], index: Path, url: str, server: NginxServer, clustered: int
) -> dict[str, Any]:
    """Index ``src`` as served at ``url`` (nginx, or a proxy in front of it) and time reads.

    ``server`` is the nginx whose access log counts requests and bytes.
    """
    res: dict[str, Any] = {"tiles": len(specs)}
    run_index(IndexOptions(source=url, out=str(index), manifest=str(src / "manifest.parquet")))
    paths = [s.emb_path for s in specs]
    res["ceiling_req_s"] = asyncio.run(ceiling(url, paths, 20_000))
    store = open_store(str(index))
    spec = specs[len(specs) // 2]
    lon, lat = spec.lon + 0.011, spec.lat - 0.013

    # (a) this reader
    store.point(lon, lat, YEAR)
    server.clear_log()
    t = time.perf_counter()
    store.point(lon + 0.001, lat, YEAR)
    warm = time.perf_counter() - t
    n, b = wire(server)
    server.clear_log()
    cold = cold_point(index, lon + 0.002, lat)
    cn, cb = wire(server)
    res["reader"] = {
        "warm_ms": warm * 1e3,
        "warm_requests": n,
        "warm_bytes": b,
        "cold_ms": cold * 1e3,
        "cold_requests": cn,
        "cold_bytes": cb,
    }
    # (b) plain xr.open_zarr with icechunk defaults
    loc = store.locate(lon, lat, YEAR)
    storage = ic.local_filesystem_storage(str(index / "utm31.icechunk"))
    prefixes = list(ic.Repository.fetch_config(storage).virtual_chunk_containers or {})
    server.clear_log()
    t = time.perf_counter()
    repo = ic.Repository.open(
        storage, authorize_virtual_chunk_access={p: ic.credentials.HttpAccess for p in prefixes}
    )
    ds = xr.open_zarr(repo.readonly_session(branch=str(YEAR)).store, group=loc.name)
    ds.embeddings.isel(y=loc.row, x=loc.col).load()
    ds.scales.isel(y=loc.row, x=loc.col).load()
    cold_x = time.perf_counter() - t
    xn, xb = wire(server)
    server.clear_log()
    t = time.perf_counter()
    ds.embeddings.isel(y=loc.row + 1, x=loc.col).load()
    ds.scales.isel(y=loc.row + 1, x=loc.col).load()
    warm_x = time.perf_counter() - t
    wn, wb = wire(server)
    res["xarray_default"] = {
        "warm_ms": warm_x * 1e3,
        "warm_requests": wn,
        "warm_bytes": wb,
        "cold_ms": cold_x * 1e3,
        "cold_requests": xn,
        "cold_bytes": xb,
    }
    # (c) upstream npy path: the whole tile
    http = HTTPStore.from_url(url, client_options={"allow_http": True})
    server.clear_log()
    t = time.perf_counter()
    obstore.get(http, spec.emb_path).bytes()
    obstore.get(http, spec.scales_path).bytes()
    whole = time.perf_counter() - t
    hn, hb = wire(server)
    res["whole_tile"] = {"ms": whole * 1e3, "requests": hn, "bytes": hb}

    # points spread 1-2 per tile over all tiles
    rng = np.random.default_rng(7)
    per = rng.integers(1, 3, len(specs))
    lons = np.concatenate(
        [s.lon + rng.uniform(-0.045, 0.045, k) for s, k in zip(specs, per, strict=True)]
    )
    lats = np.concatenate(
        [s.lat + rng.uniform(-0.045, 0.045, k) for s, k in zip(specs, per, strict=True)]
    )
    # Three calls, each next to a ceiling measurement (the machine is shared).
    # The first call also loads every touched tile's manifest from the repo
    # (not the tile server); later calls find them in Icechunk's cache.
    times, near = [], 0.0
    for _ in range(3):
        near = max(near, asyncio.run(ceiling(url, paths, 10_000)))
        server.clear_log()
        t = time.perf_counter()
        store.points(lons, lats, YEAR)
        times.append(time.perf_counter() - t)
        sn, _ = wire(server)
    first_s, spread_s = times[0], min(times[1:])
    res["spread"] = {
        "points": int(lons.size),
        "seconds": spread_s,
        "points_per_s": lons.size / spread_s,
        "requests": sn,
        "requests_per_s": sn / spread_s,
        "ceiling_req_s": near,
        "ratio_to_ceiling": (sn / spread_s) / near,
        "first_call_s": first_s,
        "first_call_ratio_to_ceiling": (sn / first_s) / near,
    }
    # clustered: 50+ points within ~500 m around one site per tile
    k = max(50, clustered // 200)
    sites = specs[:: max(1, len(specs) // 200)][:200]
    lons = np.concatenate([s.lon + rng.normal(0, 0.003, k) for s in sites])
    lats = np.concatenate([s.lat + rng.normal(0, 0.002, k) for s in sites])
    # The first call is also nginx's first read of these rows of freshly
    # written sparse files (0.6-1.5 s here against 0.3-0.45 s once read);
    # reported apart, the rate is the best of two later calls.
    server.clear_log()
    t = time.perf_counter()
    store.points(lons, lats, YEAR)
    first_cl_s = time.perf_counter() - t
    qn, qb = wire(server)
    cl_s = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        store.points(lons, lats, YEAR)
        cl_s = min(cl_s, time.perf_counter() - t)
    # the same through the Icechunk store only (one request per virtual chunk)
    plain = open_store(str(index), direct_reads=False)
    plain.tiles(YEAR, 31)
    server.clear_log()
    t = time.perf_counter()
    plain.points(lons, lats, YEAR)
    pl_s = time.perf_counter() - t
    pn, _ = wire(server)
    res["clustered"] = {
        "points": int(lons.size),
        "per_tile": k,
        "seconds": cl_s,
        "points_per_s": lons.size / cl_s,
        "first_call_points_per_s": lons.size / first_cl_s,
        "requests": qn,
        "bytes": qb,
        "icechunk_only_points_per_s": lons.size / pl_s,
        "icechunk_only_requests": pn,
    }

    # region: full tile width, 300 rows and the whole tile height, against
    # one sequential read of those rows of the tile (the physical limit)
    facts = store.tiles(YEAR, 31).sel(tile=spec.name)
    res["region"] = region_vs_sequential(store, plain, http, server, spec, facts, 300)
    res["region_tile"] = region_vs_sequential(
        store, plain, http, server, spec, facts, int(facts.height)
    )
    return res


def region_vs_sequential(
    store: Any, plain: Any, http: Any, server: NginxServer, spec: Any, facts: Any, rows: int
) -> dict[str, Any]:
    """A full-width window over ``rows`` rows of one tile against a sequential read.

    The window is the tile's own width on the zone lattice; its edge pixels
    belong to the neighbours' cells by the mosaic rule, so the reader also
    reads the neighbours' wedges. Best of five, alternating, on a shared
    machine (single runs of either moved by 2x here).
    """
    left, top, width = float(facts.left), float(facts.top), int(facts.width)
    west, north = unproject(left + 10, top - 10, 32631)
    east, south = unproject(left + 10 * width - 10, top - 10 * rows, 32631)
    bbox = (float(west), float(south), float(east), float(north))
    store.region(bbox, YEAR)
    reg_s = seq_s = ice_s = float("inf")
    for _ in range(5):
        server.clear_log()
        t = time.perf_counter()
        reg = store.region(bbox, YEAR, dequantise=False)
        reg_s = min(reg_s, time.perf_counter() - t)
        rn, rb = wire(server)
        nbytes = reg.embeddings.nbytes + reg.scales.nbytes
        height = min(reg.sizes["y"], int(facts.height))
        t = time.perf_counter()
        obstore.get_range(
            http, spec.emb_path, start=int(facts.emb_offset), length=height * width * 128
        )
        obstore.get_range(
            http, spec.scales_path, start=int(facts.scales_offset), length=height * width * 4
        )
        seq_s = min(seq_s, time.perf_counter() - t)
        server.clear_log()
        t = time.perf_counter()
        plain.region(bbox, YEAR, dequantise=False)
        ice_s = min(ice_s, time.perf_counter() - t)
        icn, _ = wire(server)
    return {
        "shape": dict(reg.sizes),
        "seconds": reg_s,
        "mb_per_s": nbytes / reg_s / 1e6,
        "requests": rn,
        "wire_bytes": rb,
        "sequential_s": seq_s,
        "sequential_mb_per_s": nbytes / seq_s / 1e6,
        "ratio": seq_s / reg_s,
        "icechunk_only_s": ice_s,
        "icechunk_only_requests": icn,
        "icechunk_only_ratio": seq_s / ice_s,
    }


def report(res: dict[str, Any], title: str) -> Table:
    """The result table a person reads."""
    tab = Table(title=title)
    for col in ("measure", "value", "note"):
        tab.add_column(col)
    tab.add_row(
        "request-rate ceiling", f"{res['ceiling_req_s']:.0f} req/s", "obstore, 64 in flight"
    )
    for key, label in (("reader", "this reader"), ("xarray_default", "xr.open_zarr, defaults")):
        r = res[key]
        tab.add_row(
            f"point warm: {label}",
            f"{r['warm_ms']:.1f} ms",
            f"{r['warm_requests']} requests, {r['warm_bytes']} bytes on the wire",
        )
        tab.add_row(
            f"point cold: {label}",
            f"{r['cold_ms']:.0f} ms",
            f"{r['cold_requests']} requests, {r['cold_bytes']} bytes",
        )
    w = res["whole_tile"]
    tab.add_row(
        "point: whole tile (upstream npy)",
        f"{w['ms']:.0f} ms",
        f"{w['requests']} requests, {w['bytes'] / 1e6:.1f} MB",
    )
    s = res["spread"]
    tab.add_row(
        "points spread 1-2/tile",
        f"{s['points_per_s']:.0f} pts/s",
        f"{s['points']} pts, {s['requests_per_s']:.0f} req/s = {s['ratio_to_ceiling']:.2f} "
        f"of the ceiling measured beside it ({s['ceiling_req_s']:.0f} req/s), manifests "
        f"cached; first call (also loads the tiles' manifests) "
        f"{s['first_call_ratio_to_ceiling']:.2f}",
    )
    c = res["clustered"]
    tab.add_row(
        f"points clustered {c['per_tile']}/tile",
        f"{c['points_per_s']:.0f} pts/s",
        f"{c['points']} pts in {c['requests']} requests, best of 2 after a first call of "
        f"{c['first_call_points_per_s']:.0f} pts/s (nginx's first read); through Icechunk only "
        f"{c['icechunk_only_points_per_s']:.0f} pts/s, {c['icechunk_only_requests']} requests",
    )
    for key in ("region", "region_tile"):
        g = res[key]
        tab.add_row(
            f"region, full tile width, {g['shape']['y']} rows",
            f"{g['mb_per_s']:.0f} MB/s",
            f"{g['shape']}, {g['requests']} requests, {g['wire_bytes'] / 1e6:.1f} MB; "
            f"sequential {g['sequential_mb_per_s']:.0f} MB/s; ratio {g['ratio']:.2f} (through "
            f"Icechunk only: {g['icechunk_only_requests']} requests, ratio "
            f"{g['icechunk_only_ratio']:.2f})",
        )
    return tab


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=1000)
    ap.add_argument("--clustered", type=int, default=20_000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "read_points.json"))
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tvz-read-"))
    shutil.rmtree(work, ignore_errors=True)
    src, index = work / "tiles", work / "index"
    specs = make_tree(src, centres=centres(args.tiles), years=(YEAR,), bands=128, sparse=True)
    os.environ["TESSERA_VZ_CACHE"] = str(work / "cache")
    with NginxServer(src) as server:
        res = measure(src, specs, index, server.url, server, args.clustered)
    tab = report(res, f"tessera-vz reads over a local nginx ({len(specs)} real-size tiles)")
    console.print(tab)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=str))
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
