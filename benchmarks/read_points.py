"""Reader benchmark over HTTPS, on loopback and with 20 ms per round trip, beside a rewritten store.

A script a person runs (not a timed test): ``python benchmarks/read_points.py``
(``--quick`` for a smoke run of a minute or two). One TLS nginx serves a
sparse tree of real-size tiles (128 bands; data regions are holes that read
as zeros, which costs nothing on disk but moves real bytes) and, beside it, a
REWRITTEN store of the same zone in upstream's sharded Zarr layout
(:mod:`rewritten`). Every figure is taken on two links to that nginx
(:mod:`links`), in one run:

1. ``loopback``: ``https://127.0.0.1`` straight to nginx;
2. ``+20 ms``: a streaming delay proxy (10 ms each way, in a child process)
   in front of the same nginx, TLS passing through.

The tiles are indexed twice, once against each link's URL (a virtual
reference names the URL its bytes are read from), so each link's reads go
through an index of their own; everything else (tiles, points, windows,
rewritten store) is shared.

On each link:

* the request-rate ceiling: small ranged GETs/s through the reader's own
  client stack (:meth:`SourceFiles.get`, aiohttp, the same checks and
  preconditions), 64 in flight;
* one request's round trip (a 128-byte GET through the same client);
* one point, warm (this reader, the reader with ``direct_reads=False``, i.e.
  Icechunk's own fetches, plain ``xr.open_zarr`` with icechunk's defaults,
  and the rewritten store) and cold in a new process (this reader and
  ``xr.open_zarr``), and the whole-tile download (upstream's npy path);
* points spread 1-2 per tile over ~1,000 tiles: points/s and request rate
  as a ratio of the ceiling measured beside it, and through Icechunk only;
* points clustered 50+ per tile around one site per tile: points/s, for this
  reader, through Icechunk only, and from the rewritten store;
* regions of full tile width (300 rows, and the whole tile's height): MB/s
  as a ratio of a sequential read of the same bytes (one ranged GET per file,
  same client), through Icechunk only, and from the rewritten store.

Bytes on the wire: nginx's ``$bytes_sent`` (answers before TLS) and, on the
+20 ms link, the proxy's TCP payload counts in both directions (requests,
answers, TLS records and handshakes). The machine is shared, so every timed
figure is the best of N calls alternating with its baseline, the two links
taking turns in every round (ratios are taken within one run); regions also
report the median ratio and the CPU each call used. Prints a table, writes
``benchmarks/results/read_points.json`` and rewrites its own section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import icechunk as ic
import numpy as np
import xarray as xr
from rich.console import Console
from rich.table import Table
from zarr.core.sync import sync

from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.geometry import unproject
from tessera_vz.core.urls import join
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.reader.points import read_located
from tessera_vz.reader.windows import window_for_bbox

sys.path.insert(0, str(Path(__file__).parent))

import results_section
import single_range
from links import Link, ProxyProcess, Traffic
from rewritten import RewrittenStore, ZoneGrid, chunk_box
from rewritten import write as write_rewrite

from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import make_tree
from tessera_vz.testing.tls import make_test_ca

console = Console()
HERE = Path(__file__).parent
YEAR = 2024
ZONE = 31
#: Where the benchmark's nginx serves the tiles and the rewritten store.
TILES, REWRITE = "tiles", "rewrite.zarr"
#: Requests in flight for the ceiling, as the reader keeps (sources.CONCURRENCY).
IN_FLIGHT = 64
#: Targets (issue 12, "Measured where users are"), on the +20 ms link.
POINT_RTT_MS = 25.0
POINT_BYTES = 1024
SPREAD_RATIO = 0.7
CLUSTERED_PTS_S = 20_000
REGION_RATIO = 0.7
REWRITE_BYTES_FACTOR = 10


def centres(n: int) -> list[tuple[float, float]]:
    """``n`` cell centres of UTM zone 31, 60 to a row, from 45.05 N northwards."""
    lons = [round(0.05 + 0.1 * i, 2) for i in range(60)]
    out: list[tuple[float, float]] = []
    row = 0
    while len(out) < n:
        out.extend((lon, round(45.05 + 0.1 * row, 2)) for lon in lons[: n - len(out)])
        row += 1
    return out


# -- what is read (the same on both links) ---------------------------------------------


@dataclass
class Workload:
    """Every point and window the benchmark reads, chosen once for both links."""

    spec: Any
    warmup: tuple[float, float]
    points: list[tuple[float, float]]
    cold: tuple[float, float]
    spread: tuple[np.ndarray, np.ndarray]
    clustered: tuple[np.ndarray, np.ndarray]
    per_tile: int
    sites: list[np.ndarray]
    #: label -> (bbox, rows asked): full tile width, 300 rows and the whole height.
    regions: dict[str, tuple[tuple[float, float, float, float], int]] = field(default_factory=dict)


def workload(specs: list[Any], table: xr.Dataset, clustered: int, repeat: int) -> Workload:
    """Choose the points and windows (seeded, so every run reads the same pixels)."""
    spec = specs[len(specs) // 2]
    lon, lat = spec.lon + 0.011, spec.lat - 0.013
    # A warm point costs a round trip: cheap enough to take the best of 4N.
    points = [(lon + 0.001 * (i + 1), lat) for i in range(4 * repeat)]
    rng = np.random.default_rng(7)
    per = rng.integers(1, 3, len(specs))
    spread_lon = np.concatenate(
        [s.lon + rng.uniform(-0.045, 0.045, k) for s, k in zip(specs, per, strict=True)]
    )
    spread_lat = np.concatenate(
        [s.lat + rng.uniform(-0.045, 0.045, k) for s, k in zip(specs, per, strict=True)]
    )
    # clustered: 50+ points within ~500 m around one site per tile (up to 200 tiles)
    n_sites = min(200, len(specs))
    k = max(50, clustered // n_sites)
    sites = specs[:: max(1, len(specs) // n_sites)][:n_sites]
    cl_lon = np.concatenate([s.lon + rng.normal(0, 0.003, k) for s in sites])
    cl_lat = np.concatenate([s.lat + rng.normal(0, 0.002, k) for s in sites])
    groups = [np.arange(i * k, (i + 1) * k) for i in range(len(sites))]
    w = Workload(
        spec, (lon, lat), points, (lon + 0.0005, lat - 0.001), (spread_lon, spread_lat),
        (cl_lon, cl_lat), k, groups,
    )  # fmt: skip
    facts = table.sel(tile=spec.name)
    left, top, width = float(facts.left), float(facts.top), int(facts.width)
    epsg = int(facts.epsg)
    for label, rows in (("region", 300), ("region_tile", int(facts.height))):
        # The tile's own width on the zone lattice: its edge pixels belong to
        # the neighbours' cells by the mosaic rule, so those are read too.
        west, north = unproject(left + 10, top - 10, epsg)
        east, south = unproject(left + 10 * width - 10, top - 10 * rows, epsg)
        w.regions[label] = ((float(west), float(south), float(east), float(north)), rows)
    return w


def region_pixels(grid: ZoneGrid, bbox: tuple[float, float, float, float]) -> tuple[slice, slice]:
    """Zone rows and columns of the window ``region(bbox)`` returns (pure geometry)."""
    win = window_for_bbox(bbox, ZONE)
    r0 = round((grid.top - win.top) / 10)
    c0 = round((win.left - grid.left) / 10)
    return slice(r0, r0 + win.height), slice(c0, c0 + win.width)


def rewrite_boxes(grid: ZoneGrid, w: Workload) -> list[tuple[int, ...]]:
    """The inner-chunk boxes the rewritten store needs for the compared reads."""
    lons = [p[0] for p in (w.warmup, *w.points)]
    lats = [p[1] for p in (w.warmup, *w.points)]
    boxes = [chunk_box(*grid.pixels(lons, lats))]
    rows, cols = grid.pixels(*w.clustered)
    boxes += [chunk_box(rows[g], cols[g]) for g in w.sites]
    boxes += [chunk_box(*region_pixels(grid, bbox)) for bbox, _ in w.regions.values()]
    return boxes


# -- measuring ---------------------------------------------------------------------------


def timed(link: Link, prefix: str, fn: Callable[[], Any]) -> tuple[float, Traffic, Any]:
    """Run ``fn`` once: seconds, what crossed the link for URIs under ``prefix``, its result."""
    link.start()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    return seconds, link.count(prefix), out


def best(calls: list[tuple[float, Traffic, Any]]) -> tuple[float, Traffic, Any]:
    """The fastest of several calls (the machine is shared: slower ones waited for a core)."""
    return min(calls, key=lambda c: c[0])


def wire(t: Traffic, pre: str = "") -> dict[str, Any]:
    """A call's traffic as result fields (``requests``, nginx ``bytes``, proxy ``wire_*``)."""
    return {
        f"{pre}requests": t.requests,
        f"{pre}bytes": t.sent,
        f"{pre}wire_up": t.up,
        f"{pre}wire_down": t.down,
    }


@dataclass(frozen=True)
class Ranges:
    """Small ranges of the tiles' embedding files, as the reader asks for them."""

    urls: list[str]
    starts: list[int]
    checksums: list[str]
    sizes: list[int]


def ceiling_ranges(table: xr.Dataset) -> Ranges:
    """One 128-byte range per tile of the tiles table, in each data region."""
    pairs = zip(table["source"].values, table["emb_path"].values, strict=True)
    urls = [join(str(s), str(p)) for s, p in pairs]
    return Ranges(
        urls,
        [int(v) for v in table["emb_offset"].values],
        [str(v) for v in table["emb_checksum"].values],
        [int(v) for v in table["emb_size"].values],
    )


def ceiling(files: SourceFiles, ranges: Ranges, n: int, seed: int = 0) -> float:
    """Small ranged GETs/s through the reader's client stack, ``IN_FLIGHT`` at once.

    Each request is what a point read sends: 128 bytes at a random pixel of
    a tile's embeddings, with the checksum the index recorded as a
    precondition. Run on zarr's event loop, where the reader's own reads run,
    so the pooled connections are the reader's.
    """
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(ranges.urls), n)
    offsets = rng.integers(0, 10_000_000 // 128, n) * 128

    async def run() -> float:
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def one(i: int) -> None:
            j = int(which[i])
            start = ranges.starts[j] + int(offsets[i])
            async with sem:
                await files.get(
                    ranges.urls[j], start, start + 128, ranges.checksums[j], "ceiling",
                    ranges.sizes[j],
                )  # fmt: skip

        await asyncio.gather(*(one(i) for i in range(min(n, 256))))  # warm the pool
        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t)

    return float(sync(run()))


def round_trip(files: SourceFiles, ranges: Ranges, n: int) -> float:
    """Milliseconds of one 128-byte ranged GET on a warm connection (best of ``n``).

    The floor of a point read on this link with this client: what "one
    round trip" costs here, TLS and client stack included.
    """

    async def once(i: int) -> float:
        j = i % len(ranges.urls)
        start = ranges.starts[j] + 128 * (1000 + 37 * i)
        t = time.perf_counter()
        await files.get(ranges.urls[j], start, start + 128, ranges.checksums[j], "round trip",
                        ranges.sizes[j])  # fmt: skip
        return time.perf_counter() - t

    return min(float(sync(once(i))) for i in range(n)) * 1e3


_COLD = """
import json, sys, time
import dask.array, xarray, icechunk  # imports are not part of the lookup
from tessera_vz.reader import open_store
t = time.perf_counter()
store = open_store(sys.argv[1])
store.point(float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def run_cold(link: Link, prefix: str, code: str, args: list[str]) -> dict[str, Any]:
    """A new process's first read (imports excluded): milliseconds and what crossed the link.

    The process inherits ``SSL_CERT_FILE`` and the tiles-table cache
    (``TESSERA_VZ_CACHE``); its connections to the mirror are new (TCP and
    TLS handshakes included).
    """
    link.start()
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], check=False, capture_output=True, text=True
    )
    if not proc.stdout.strip():
        raise RuntimeError(f"cold read failed ({proc.returncode}): {proc.stderr[-2000:]}")
    if proc.returncode != 0:
        console.print(f"[yellow]cold-read process exited {proc.returncode} after answering[/]")
    t = link.count(prefix)
    return {"ms": float(json.loads(proc.stdout)["seconds"]) * 1e3, **wire(t)}


_COLD_XR = """
import json, sys, time
import dask.array, xarray as xr, icechunk as ic  # imports are not part of the lookup
index, group, row, col, year = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
t = time.perf_counter()
storage = ic.local_filesystem_storage(index)
prefixes = list(ic.Repository.fetch_config(storage).virtual_chunk_containers or {})
repo = ic.Repository.open(
    storage, authorize_virtual_chunk_access={p: ic.credentials.HttpAccess for p in prefixes}
)
ds = xr.open_zarr(repo.readonly_session(branch=str(year)).store, group=group)
ds.embeddings.isel(y=row, x=col).load()
ds.scales.isel(y=row, x=col).load()
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


@dataclass
class Side:
    """One link and everything read through it: its index, readers and results."""

    key: str
    link: Link
    #: Path prefix of the tiles in nginx's log (``/tiles/``).
    prefix: str
    index: Path
    rewrite: RewrittenStore | None = None
    res: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.store = open_store(str(self.index))
        self.plain = open_store(str(self.index), direct_reads=False)
        self.table = self.store.tiles(YEAR, ZONE)
        self.plain.tiles(YEAR, ZONE)
        self.files = self.store.source_files()
        self.ranges = ceiling_ranges(self.table)
        self.res["tiles"] = int(self.table.sizes["tile"])

    def timed(self, fn: Callable[[], Any], rewrite: bool = False) -> tuple[float, Traffic, Any]:
        """:func:`timed` on this link, counting the tiles (or the rewritten store's) requests."""
        return timed(self.link, f"/{REWRITE}/" if rewrite else self.prefix, fn)


def xarray_dataset(side: Side, loc: Any) -> xr.Dataset:
    """A tile opened as plain ``xr.open_zarr`` users do, with icechunk's default settings."""
    storage = ic.local_filesystem_storage(str(side.index / f"utm{ZONE}.icechunk"))
    config = ic.Repository.fetch_config(storage)
    prefixes = list((config.virtual_chunk_containers if config else None) or {})
    repo = ic.Repository.open(
        storage, authorize_virtual_chunk_access={p: ic.credentials.HttpAccess for p in prefixes}
    )
    return xr.open_zarr(repo.readonly_session(branch=str(YEAR)).store, group=loc.name)


def whole_tile(side: Side, spec: Any) -> tuple[float, Traffic, Any]:
    """Upstream's npy path: both files of the tile, whole, through the same client."""

    async def both() -> list[bytes]:
        return list(
            await asyncio.gather(
                side.files.fetch(join(side.link.url, spec.emb_path), "whole tile"),
                side.files.fetch(join(side.link.url, spec.scales_path), "whole tile"),
            )
        )

    return side.timed(lambda: sync(both()))


def measure(
    src: Path, specs: list[Any], index: Path, url: str, server: NginxServer, clustered: int,
    **kw: Any,
) -> dict[str, Any]:  # fmt: skip
    """Index ``src`` as served at ``url`` and measure one link (``scale.py`` calls this).

    ``server`` is the nginx whose access log counts requests and bytes; the
    tree is at its root. No rewritten store and no proxy counters.
    """
    run_index(IndexOptions(source=url, out=str(index), manifest=str(src / "manifest.parquet")))
    side = Side("link", Link("link", url, server), "/", index)
    w = workload(specs, side.table, clustered, kw.get("repeat", 5))
    measure_links([side], w, None, **kw)
    return side.res


def measure_links(
    sides: list[Side],
    w: Workload,
    grid: ZoneGrid | None,
    *,
    repeat: int = 5,
    heavy_repeat: int = 2,
    ceiling_n: int = 20_000,
) -> None:
    """Every figure on every link, into each ``side.res``.

    The links take turns inside every repeat loop (a figure and its baseline
    on one link, then on the next), so that a burst of load from other users
    of the machine lands on both links alike.
    """
    phases = (ceilings, points, spread_points, clustered_points, regions)
    for phase in phases:
        phase(sides, w, grid, repeat, heavy_repeat, ceiling_n)
    for side in sides:
        if not side.res.get("rewrite"):
            side.res.pop("rewrite", None)


def _trim() -> None:
    """Give freed heap back to the OS (glibc), between phases.

    The rewritten store's reads (zarr decoding thousands of 8.4 MB chunks on
    threads) leave ~1-3 GB of freed memory in glibc's arenas; left there, it
    fragments the memory the reader maps next (its windows ask for huge
    pages), and the reader would pay for the baseline's garbage.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _say(sides: list[Side], what: str) -> None:
    """Say which phase starts, with this process's resident memory (Linux)."""
    _trim()
    links = " and ".join(s.link.name for s in sides)
    statm = Path("/proc/self/statm")
    rss = int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") if statm.exists() else 0
    console.print(
        f"[bold]{links}[/]: {what}" + (f" [dim](RSS {rss / 1e9:.1f} GB)[/]" if rss else "")
    )


def ceilings(sides: list[Side], w: Workload, grid: Any, repeat: int, heavy: int, n: int) -> None:
    """The request-rate ceiling and one request's round trip, per link."""
    _say(sides, "request-rate ceiling, one round trip")
    for side in sides:
        side.res["ceiling_req_s"] = ceiling(side.files, side.ranges, n)
    for side in sides:
        side.res["round_trip_ms"] = round_trip(side.files, side.ranges, 4 * repeat)


def points(sides: list[Side], w: Workload, grid: Any, repeat: int, heavy: int, n: int) -> None:
    """One point, warm (this reader, Icechunk only, xr.open_zarr, the rewrite) and cold."""
    _say(sides, "one point")
    lon, lat = w.warmup
    spec = w.spec
    loc = sides[0].store.locate(lon, lat, YEAR)
    px = grid.pixels([p[0] for p in w.points], [p[1] for p in w.points]) if grid else None
    datasets = {}
    for side in sides:
        side.store.point(lon, lat, YEAR)
        side.plain.point(lon, lat, YEAR)
        datasets[side.key] = ds = xarray_dataset(side, loc)
        ds.embeddings.isel(y=loc.row, x=loc.col).load()
        ds.scales.isel(y=loc.row, x=loc.col).load()
        if side.rewrite is not None and grid is not None:
            r0, c0 = grid.pixels([lon], [lat])
            side.rewrite.point(int(r0[0]), int(c0[0]))
    calls: dict[tuple[str, str], list[tuple[float, Traffic, Any]]] = {}
    for i, (plon, plat) in enumerate(w.points):
        for side in sides:
            ds = datasets[side.key]

            def xr_point(ds: xr.Dataset = ds, i: int = i) -> None:
                ds.embeddings.isel(y=loc.row + 1 + i, x=loc.col).load()
                ds.scales.isel(y=loc.row + 1 + i, x=loc.col).load()

            got = calls.setdefault
            got((side.key, "reader"), []).append(
                side.timed(partial(side.store.point, plon, plat, YEAR))
            )
            got((side.key, "plain"), []).append(
                side.timed(partial(side.plain.point, plon, plat, YEAR))
            )
            got((side.key, "xarray"), []).append(side.timed(xr_point))
            if side.rewrite is not None and px is not None:
                r, c = int(px[0][i]), int(px[1][i])
                got((side.key, "rewrite"), []).append(
                    side.timed(partial(side.rewrite.point, r, c), rewrite=True)
                )
    plon, plat = w.points[0]
    for side in sides:
        res = side.res
        s, t, _ = best(calls[side.key, "reader"])
        res["reader"] = {"warm_ms": s * 1e3, **wire(t, "warm_")}
        s, t, _ = best(calls[side.key, "plain"])
        res["icechunk_only_point"] = {"warm_ms": s * 1e3, **wire(t, "warm_")}
        s, t, _ = best(calls[side.key, "xarray"])
        res["xarray_default"] = {"warm_ms": s * 1e3, **wire(t, "warm_")}
        if (side.key, "rewrite") in calls:
            s, t, _ = best(calls[side.key, "rewrite"])
            res.setdefault("rewrite", {})["point"] = {"ms": s * 1e3, **wire(t)}
        # Where a warm point's time goes besides the round trip: locating its
        # pixel (point() checks with locate(), then read_points locates it again).
        res["locate_ms"] = 1e3 * min(
            side.timed(partial(side.store.locate, plon, plat, YEAR))[0]
            + side.timed(partial(side.store.locate_points, [plon], [plat], YEAR))[0]
            for _ in range(repeat)
        )
        # ... and its two requests, issued together once the pixel is located.
        located = side.store.locate_points([plon], [plat], YEAR)
        sources = {ZONE: side.store.zone_year(ZONE, YEAR)[0]}
        res["point_io_ms"] = 1e3 * min(
            side.timed(lambda: sync(read_located(sources, located, YEAR)))[0]  # noqa: B023
            for _ in range(4 * repeat)
        )
    _say(sides, "one point from a new process")
    for side in sides:
        cold = run_cold(
            side.link, side.prefix, _COLD, [str(side.index), *map(str, w.cold), str(YEAR)]
        )
        side.res["reader"].update(
            {"cold_ms": cold["ms"], **{f"cold_{k}": v for k, v in cold.items() if k != "ms"}}
        )
        args = [side.index / f"utm{ZONE}.icechunk", loc.name, loc.row - 2, loc.col, YEAR]
        cold = run_cold(side.link, side.prefix, _COLD_XR, [str(a) for a in args])
        side.res["xarray_default"].update(
            {"cold_ms": cold["ms"], **{f"cold_{k}": v for k, v in cold.items() if k != "ms"}}
        )
    _say(sides, "whole tile")
    for side in sides:
        s, t, _ = whole_tile(side, spec)
        side.res["whole_tile"] = {"ms": s * 1e3, **wire(t)}


def spread_points(
    sides: list[Side], w: Workload, grid: Any, repeat: int, heavy: int, n: int
) -> None:
    """Points spread 1-2 per tile, each call beside a ceiling measurement."""
    _say(sides, "spread points")
    lons, lats = w.spread
    calls: dict[str, list[tuple[float, Traffic, Any]]] = {s.key: [] for s in sides}
    near = dict.fromkeys(calls, 0.0)
    # The first call also loads every touched tile's manifest from the repo
    # (not the tile server); later calls find them in Icechunk's cache.
    for i in range(2 + repeat // 2):
        for side in sides:
            near[side.key] = max(near[side.key], ceiling(side.files, side.ranges, n // 4, i + 1))
            calls[side.key].append(side.timed(partial(side.store.points, lons, lats, YEAR)))
    for side in sides:
        first_s, first_t, _ = calls[side.key][0]
        s, t, _ = best(calls[side.key][1:])
        side.res["spread"] = {
            "points": int(lons.size),
            "seconds": s,
            "points_per_s": lons.size / s,
            "requests": t.requests,
            "requests_per_s": t.requests / s,
            "ceiling_req_s": near[side.key],
            "ratio_to_ceiling": (t.requests / s) / near[side.key],
            "first_call_s": first_s,
            "first_call_ratio_to_ceiling": (first_t.requests / first_s) / near[side.key],
            "bytes": t.sent,
            "wire_up": t.up,
            "wire_down": t.down,
        }
    for side in sides:  # the same points through Icechunk only (its manifests are loaded)
        side.plain.points(lons, lats, YEAR)
        s, t, _ = side.timed(partial(side.plain.points, lons, lats, YEAR))
        side.res["spread"].update(
            {"icechunk_only_seconds": s, "icechunk_only_points_per_s": lons.size / s,
             **wire(t, "icechunk_only_")}
        )  # fmt: skip


def clustered_points(
    sides: list[Side], w: Workload, grid: ZoneGrid | None, repeat: int, heavy: int, n: int
) -> None:
    """Clustered points: this reader, the rewritten store, and Icechunk only."""
    _say(sides, "clustered points")
    lons, lats = w.clustered
    rows, cols = grid.pixels(lons, lats) if grid is not None else (None, None)
    calls: dict[tuple[str, str], list[tuple[float, Traffic, Any]]] = {}
    # The first call is also nginx's first read of these rows of freshly
    # written sparse files; reported apart, the rate is the best of later calls.
    first = {s.key: s.timed(partial(s.store.points, lons, lats, YEAR)) for s in sides}
    for _ in range(heavy):
        for side in sides:
            calls.setdefault((side.key, "reader"), []).append(
                side.timed(partial(side.store.points, lons, lats, YEAR))
            )
            if side.rewrite is not None and rows is not None and cols is not None:
                calls.setdefault((side.key, "rewrite"), []).append(
                    side.timed(partial(side.rewrite.points, rows, cols), rewrite=True)
                )
    for side in sides:
        ps, pt, _ = side.timed(partial(side.plain.points, lons, lats, YEAR))
        s, t, _ = best(calls[side.key, "reader"])
        side.res["clustered"] = {
            "points": int(lons.size),
            "per_tile": w.per_tile,
            "sites": len(w.sites),
            "seconds": s,
            "points_per_s": lons.size / s,
            "first_call_points_per_s": lons.size / first[side.key][0],
            **wire(t),
            "icechunk_only_seconds": ps,
            "icechunk_only_points_per_s": lons.size / ps,
            **wire(pt, "icechunk_only_"),
        }
        if (side.key, "rewrite") in calls:
            s, t, _ = best(calls[side.key, "rewrite"])
            side.res.setdefault("rewrite", {})["clustered"] = {
                "seconds": s, "points_per_s": lons.size / s, **wire(t),
            }  # fmt: skip


def regions(
    sides: list[Side], w: Workload, grid: ZoneGrid | None, repeat: int, heavy: int, n: int
) -> None:
    """Full-width windows: this reader, a sequential read, Icechunk only, the rewrite."""
    for label, (bbox, _rows) in w.regions.items():
        _say(sides, label)
        for side in sides:
            side.res[label] = region_vs_sequential(sides, side, w.spec.name, bbox, repeat)
        if grid is None:
            continue
        rsl, csl = region_pixels(grid, bbox)
        calls: dict[str, list[tuple[float, Traffic, Any]]] = {}
        for side in sides:
            shape = side.res[label]["shape"]
            if (rsl.stop - rsl.start, csl.stop - csl.start) != (shape["y"], shape["x"]):
                raise RuntimeError(f"{label}: the rewritten store's window is not the reader's")
            if side.rewrite is not None:
                side.rewrite.region(rsl, csl)
        for _ in range(heavy):
            for side in sides:
                if side.rewrite is not None:
                    calls.setdefault(side.key, []).append(
                        side.timed(partial(side.rewrite.region, rsl, csl), rewrite=True)
                    )
        for side in sides:
            if side.key in calls:
                s, t, _ = best(calls[side.key])
                nbytes = side.res[label]["nbytes"]
                side.res.setdefault("rewrite", {})[label] = {
                    "seconds": s, "mb_per_s": nbytes / s / 1e6, **wire(t),
                }  # fmt: skip


def region_vs_sequential(
    sides: list[Side], side: Side, name: str, bbox: tuple[float, float, float, float],
    repeat: int,
) -> dict[str, Any]:  # fmt: skip
    """A full-width window against one sequential ranged read of the same rows.

    The window is the tile's own width on the zone lattice; its edge pixels
    belong to the neighbours' cells by the mosaic rule, so the reader also
    reads the neighbours' wedges. The sequential read is the physical limit:
    one ranged GET per file (embeddings and scales, issued together) of the
    tile's rows, through the same client. Best of ``repeat``, alternating.
    """
    facts = side.table.sel(tile=name)
    store, plain, files = side.store, side.plain, side.files
    reg = store.region(bbox, YEAR, dequantise=False)
    height = min(reg.sizes["y"], int(facts.height))
    nbytes = int(reg.embeddings.nbytes + reg.scales.nbytes)

    def sequential() -> Any:
        return single_range.sequential_rows(files, facts, height)

    mine, seq, ice = [], [], []
    cpu: dict[str, list[float]] = {"reader": [], "sequential": []}
    kernel: dict[str, list[tuple[float, float, int]]] = {"reader": [], "sequential": []}

    def on_cpu(key: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn``, also noting the CPU this process spent on it (all threads).

        Split into user and kernel time with the page faults taken, which
        tells computing apart from the memory a call maps.
        """

        def run() -> Any:
            r0, c = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
            out = fn()
            cpu[key].append(time.process_time() - c)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            kernel[key].append(
                (r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt)
            )
            return out

        return run

    for _ in range(repeat):
        mine.append(
            side.timed(on_cpu("reader", lambda: store.region(bbox, YEAR, dequantise=False)))
        )
        seq.append(side.timed(on_cpu("sequential", lambda: sync(sequential()))))
        ice.append(side.timed(lambda: plain.region(bbox, YEAR, dequantise=False)))
    rs, rt, _ = best(mine)
    ss, st, _ = best(seq)
    cs, ct, _ = best(ice)
    med = {k: float(np.median([c[0] for c in v])) for k, v in (("r", mine), ("s", seq))}
    return {
        "shape": dict(reg.sizes),
        "nbytes": nbytes,
        "seconds": rs,
        "mb_per_s": nbytes / rs / 1e6,
        "requests": rt.requests,
        "wire_bytes": rt.sent,
        "wire_up": rt.up,
        "wire_down": rt.down,
        "sequential_s": ss,
        "sequential_mb_per_s": nbytes / ss / 1e6,
        "sequential_wire_bytes": st.sent,
        "ratio": ss / rs,
        # Medians show what a typical call sees when the best of N is a lucky one.
        "median_s": med["r"],
        "sequential_median_s": med["s"],
        "median_ratio": med["s"] / med["r"],
        "cpu_median_s": float(np.median(cpu["reader"])),
        "sequential_cpu_median_s": float(np.median(cpu["sequential"])),
        "icechunk_only_s": cs,
        "icechunk_only_requests": ct.requests,
        "icechunk_only_ratio": ss / cs,
        "calls_s": {"reader": [c[0] for c in mine], "sequential": [c[0] for c in seq],
                    "icechunk_only": [c[0] for c in ice]},
        "cpu_s": cpu,
        "user_sys_faults": kernel,
    }  # fmt: skip


# -- reporting ---------------------------------------------------------------------------

LINKS = (("loopback", "loopback HTTPS"), ("latency", "HTTPS +20 ms"))


def _b(n: Any) -> str:
    if n is None:
        return "-"
    n = float(n)
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    if n >= 1e4:
        return f"{n / 1e3:.0f} kB"
    return f"{n:,.0f} B"


def _wire(d: dict[str, Any], pre: str = "") -> str:
    """``N req, nginx X; proxy up/down`` for a result dict."""
    text = f"{d.get(pre + 'requests', '?')} req, {_b(d.get(pre + 'bytes'))}"
    up, down = d.get(pre + "wire_up"), d.get(pre + "wire_down")
    if up is not None and down is not None:
        text += f" (wire {_b(up)} up + {_b(down)} down)"
    return text


def _ms(d: dict[str, Any], key: str, pre: str = "") -> str:
    """``T ms; N req, B`` for a point read's result dict."""
    digits = 1 if d[key] < 100 else 0
    return f"{d[key]:.{digits}f} ms; " + _wire(d, pre)


def _spread(r: dict[str, Any]) -> str:
    s = r["spread"]
    return (
        f"{s['points_per_s']:.0f} pts/s ({s['points']} pts, {s['requests']} req); "
        f"{s['requests_per_s']:.0f} req/s = {s['ratio_to_ceiling']:.2f} of the "
        f"{s['ceiling_req_s']:.0f} beside it; first call {s['first_call_ratio_to_ceiling']:.2f}"
    )


def _clustered(r: dict[str, Any]) -> str:
    c = r["clustered"]
    return (
        f"{c['points_per_s']:.0f} pts/s ({c['points']} pts, {c['per_tile']}/site); "
        f"{_wire(c)}; first call {c['first_call_points_per_s']:.0f} pts/s"
    )


def _region(g: dict[str, Any]) -> str:
    down = f" (wire {_b(g['wire_down'])} down)" if g.get("wire_down") else ""
    return (
        f"{g['mb_per_s']:.0f} MB/s = {g['ratio']:.2f} of sequential "
        f"({g['sequential_mb_per_s']:.0f} MB/s; medians {g['median_ratio']:.2f}); "
        f"{g['requests']} req, {_b(g['wire_bytes'])}{down}"
    )


def _rewrite_region(h: dict[str, Any]) -> str:
    return f"{h['mb_per_s']:.0f} MB/s ({h['seconds'] * 1e3:.0f} ms); {_wire(h)}"


def _icechunk_region(g: dict[str, Any]) -> str:
    return (
        f"{g['icechunk_only_ratio']:.2f} of sequential ({g['icechunk_only_s'] * 1e3:.0f} ms, "
        f"{g['icechunk_only_requests']} req)"
    )


def _pick(fmt: Callable[[dict[str, Any]], str], *keys: str) -> Callable[[dict[str, Any]], str]:
    def cell(r: dict[str, Any]) -> str:
        for k in keys:
            r = r[k]
        return fmt(r)

    return cell


def rows(res: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """The table: one (measure, {link: cell}) per row; ``-`` where a figure is missing."""
    cells: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("request-rate ceiling (64 in flight)", lambda r: f"{r['ceiling_req_s']:.0f} req/s"),
        ("one 128-byte GET (the link's round trip)", lambda r: f"{r['round_trip_ms']:.1f} ms"),
        ("point warm: this reader", lambda r: _ms(r["reader"], "warm_ms", "warm_")),
        ("point warm: rewritten store", lambda r: _ms(r["rewrite"]["point"], "ms")),
        ("point warm: direct_reads=False",
         lambda r: _ms(r["icechunk_only_point"], "warm_ms", "warm_")),
        ("point warm: xr.open_zarr defaults",
         lambda r: _ms(r["xarray_default"], "warm_ms", "warm_")),
        ("point cold (new process): this reader", lambda r: _ms(r["reader"], "cold_ms", "cold_")),
        ("point cold (new process): xr.open_zarr defaults",
         lambda r: _ms(r["xarray_default"], "cold_ms", "cold_")),
        ("point: whole tile (upstream npy path)", lambda r: _ms(r["whole_tile"], "ms")),
        ("points spread 1-2/tile: this reader", _spread),
        ("points spread: direct_reads=False", lambda r: (
            f"{r['spread']['icechunk_only_points_per_s']:.0f} pts/s; "
            + _wire(r["spread"], "icechunk_only_"))),
        ("points clustered: this reader", _clustered),
        ("points clustered: rewritten store", lambda r: (
            f"{r['rewrite']['clustered']['points_per_s']:.0f} pts/s; "
            + _wire(r["rewrite"]["clustered"]))),
        ("points clustered: direct_reads=False", lambda r: (
            f"{r['clustered']['icechunk_only_points_per_s']:.0f} pts/s; "
            + _wire(r["clustered"], "icechunk_only_"))),
    ]  # fmt: skip
    for key, label in (("region", "300 rows"), ("region_tile", "whole tile")):
        cells += [
            (f"region {label}, full width: this reader", _pick(_region, key)),
            (f"region {label}: rewritten store", _pick(_rewrite_region, "rewrite", key)),
            (f"region {label}: direct_reads=False", _pick(_icechunk_region, key)),
        ]
    out = []
    for label, cell in cells:
        row = {}
        for key, _ in LINKS:
            try:
                row[key] = cell(res["links"][key])
            except (KeyError, TypeError):
                row[key] = "-"
        out.append((label, row))
    return out


def table(res: dict[str, Any], title: str) -> Table:
    """The result table a person reads (rich)."""
    tab = Table(title=title, show_lines=True)
    tab.add_column("measure")
    for _, label in LINKS:
        tab.add_column(label)
    for label, cells in rows(res):
        tab.add_row(label, *(cells[k] for k, _ in LINKS))
    return tab


def verdicts(res: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """Each target (on the +20 ms link) as (target, met, the figures that decide it)."""
    lat = res["links"]["latency"]
    out: list[tuple[str, bool | None, str]] = []
    r = lat["reader"]
    both = (r["warm_wire_up"] or 0) + (r["warm_wire_down"] or 0)
    out.append((
        f"warm point: one round trip (<= {POINT_RTT_MS:.0f} ms)",
        r["warm_ms"] <= POINT_RTT_MS,
        f"{r['warm_ms']:.1f} ms, {r['warm_requests']} requests issued together; one 128-byte "
        f"GET on this link {lat['round_trip_ms']:.1f} ms",
    ))  # fmt: skip
    out.append((
        "warm point: < 1 KiB on the wire",
        r["warm_bytes"] < POINT_BYTES,
        f"nginx sent {r['warm_bytes']} B; through the proxy {both} B in both directions "
        f"({r['warm_wire_up']} up, {r['warm_wire_down']} down, TLS records included)",
    ))  # fmt: skip
    s = lat["spread"]
    out.append((
        f"spread points >= {SPREAD_RATIO} of the request-rate ceiling",
        s["ratio_to_ceiling"] >= SPREAD_RATIO,
        f"{s['requests_per_s']:.0f} req/s against {s['ceiling_req_s']:.0f} = "
        f"{s['ratio_to_ceiling']:.2f} ({s['requests']} requests for {s['points']} points)",
    ))  # fmt: skip
    c = lat["clustered"]
    out.append((
        f"clustered points >= {CLUSTERED_PTS_S:,} pts/s",
        c["points_per_s"] >= CLUSTERED_PTS_S,
        f"{c['points_per_s']:,.0f} pts/s ({c['points']} points in {c['seconds'] * 1e3:.0f} ms, "
        f"{c['requests']} requests)",
    ))  # fmt: skip
    for key, label in (("region", "300 rows"), ("region_tile", "whole tile")):
        g = lat[key]
        out.append((
            f"region ({label}) >= {REGION_RATIO} of a sequential read",
            g["ratio"] >= REGION_RATIO,
            f"{g['mb_per_s']:.0f} MB/s against {g['sequential_mb_per_s']:.0f} MB/s = "
            f"{g['ratio']:.2f} ({g['requests']} requests); median calls "
            f"{g['median_s'] * 1e3:.0f} ms against {g['sequential_median_s'] * 1e3:.0f} ms = "
            f"{g['median_ratio']:.2f}",
        ))  # fmt: skip
    rw = lat.get("rewrite")
    if rw:
        pr, pw = r["warm_bytes"], rw["point"]["bytes"]
        out.append((
            f"point vs rewritten store: >= {REWRITE_BYTES_FACTOR}x fewer bytes in no more time",
            pw >= REWRITE_BYTES_FACTOR * pr and r["warm_ms"] <= rw["point"]["ms"],
            f"{pr:,} B in {r['warm_ms']:.1f} ms against {pw:,} B in {rw['point']['ms']:.1f} ms "
            f"({pw / max(pr, 1):,.0f}x the bytes)",
        ))  # fmt: skip
        cr, cw = c["bytes"], rw["clustered"]["bytes"]
        out.append((
            f"clustered vs rewritten store: >= {REWRITE_BYTES_FACTOR}x fewer bytes in no more time",
            cw >= REWRITE_BYTES_FACTOR * cr and c["seconds"] <= rw["clustered"]["seconds"],
            f"{cr / 1e6:.1f} MB in {c['seconds'] * 1e3:.0f} ms against {cw / 1e6:.0f} MB in "
            f"{rw['clustered']['seconds'] * 1e3:.0f} ms ({cw / max(cr, 1):,.0f}x the bytes)",
        ))  # fmt: skip
        for key, label in (("region", "300 rows"), ("region_tile", "whole tile")):
            g, h = lat[key], rw[key]
            faster = g["seconds"] <= h["seconds"]
            out.append((
                f"region ({label}) vs rewritten store (no target: who wins, by how much)",
                None,
                f"this reader {g['wire_bytes'] / 1e6:.1f} MB in {g['seconds'] * 1e3:.0f} ms, "
                f"rewritten store {h['bytes'] / 1e6:.1f} MB in {h['seconds'] * 1e3:.0f} ms: "
                + ("this reader" if faster else "the rewritten store")
                + f" is {max(g['seconds'], h['seconds']) / min(g['seconds'], h['seconds']):.2f}x "
                "faster",
            ))  # fmt: skip
    return out


def markdown(res: dict[str, Any], notes: list[str]) -> str:
    """The RESULTS.md section: setup, the table, each target met or missed."""
    cfg = res["config"]
    lines = [
        "## Reads over HTTPS, loopback and +20 ms, beside the rewritten store",
        "",
        f"Generated by `python benchmarks/read_points.py` on {cfg['machine']} "
        f"({cfg['cpus']} cores, shared), {cfg['date']}"
        + (" (`--quick`)" if cfg["quick"] else "")
        + f". {cfg['tiles']} real-size tiles (sparse: holes read as zeros) on one nginx with "
        "TLS; the +20 ms link is a streaming delay proxy (10 ms each way, its own process) in "
        "front of the same nginx, and the tiles are indexed once per link. Every time is the "
        f"best of {cfg['repeat']} calls ({4 * cfg['repeat']} for warm points, "
        f"{cfg['heavy_repeat']} for clustered points and the rewritten store's regions) "
        "alternating with its baseline, the two links taking turns in every round; ratios are "
        "within one run. "
        "Bytes: what nginx sent (`$bytes_sent`, answers before TLS) and, on the +20 ms link, "
        "what crossed the proxy in both directions (requests, TLS records and handshakes).",
        "",
        f"Rewritten store: {res['rewrite']['layout']}; zone array "
        f"{' x '.join(map(str, res['rewrite']['zone_shape']))}, "
        f"{res['rewrite']['chunks_written']} inner chunks written (the ones the compared reads "
        "touch) with quantised Gaussian embeddings and float32 scales in (0, 1); zstd kept "
        f"{1 / res['rewrite']['compression_ratio']:.0%} of their bytes. Read with zarr "
        f"{cfg['zarr']} (`ObjectStore` over obstore's `HTTPStore`), 64 requests in flight.",
        "",
        "| measure | loopback HTTPS | HTTPS +20 ms |",
        "| --- | --- | --- |",
    ]
    for label, cells in rows(res):
        lines.append(f"| {label} | {cells['loopback']} | {cells['latency']} |")
    lines += [
        "",
        "### Targets (HTTPS +20 ms)",
        "",
        "| target | | measured |",
        "| --- | --- | --- |",
    ]
    for target, met, detail in verdicts(res):
        mark = "n/a" if met is None else ("met" if met else "**missed**")
        lines.append(f"| {target} | {mark} | {detail} |")
    if "single_range" in res:
        lines += ["", *single_range.markdown(res["single_range"])]
    if notes:
        lines += ["", "### Causes and notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def notes_for(res: dict[str, Any]) -> list[str]:
    """Causes of missed targets that the figures themselves show."""
    out = []
    lat, loop = res["links"]["latency"], res["links"]["loopback"]
    r = lat["reader"]
    if r["warm_ms"] > POINT_RTT_MS:
        rest = r["warm_ms"] - lat["point_io_ms"] - lat["locate_ms"]
        out.append(
            f"Warm point: {r['warm_ms']:.1f} ms, of which {lat['point_io_ms']:.1f} ms are its two "
            "requests issued together once the pixel is located (a single 128-byte GET through "
            f"the same client takes {lat['round_trip_ms']:.1f} ms on this link: 20 ms of delay "
            f"plus TLS, aiohttp, nginx and the proxy), {lat['locate_ms']:.1f} ms locating the "
            "pixel before any request leaves (`TesseraStore.point` calls `locate()` for its error "
            "message, then `_read_points` locates it again with `locate_points()`; both are "
            "xarray/pandas lookups in the tiles table), and ~"
            f"{max(rest, 0.0):.1f} ms the rest (dequantising, handing the read to zarr's event "
            "loop and back). Each figure is a best of several calls, so the parts add up only "
            f"roughly. On loopback the same point takes {loop['reader']['warm_ms']:.1f} ms "
            f"({loop['point_io_ms']:.1f} ms of I/O, {loop['locate_ms']:.1f} ms locating)."
        )
    for key, label in (("region", "300 rows"), ("region_tile", "whole tile")):
        g = lat[key]
        if g["ratio"] >= REGION_RATIO:
            continue
        calls = g["calls_s"]
        out.append(
            f"Region ({label}): best of {len(calls['reader'])} {g['seconds'] * 1e3:.0f} ms against "
            f"{g['sequential_s'] * 1e3:.0f} ms for the sequential read; this reader's calls took "
            f"{min(calls['reader']) * 1e3:.0f}-{max(calls['reader']) * 1e3:.0f} ms (median "
            f"{g['median_s'] * 1e3:.0f}), the sequential read's "
            f"{min(calls['sequential']) * 1e3:.0f}-{max(calls['sequential']) * 1e3:.0f} ms "
            f"(median {g['sequential_median_s'] * 1e3:.0f}). Per call the reader used "
            f"{g['cpu_median_s'] * 1e3:.0f} ms of this process's CPU (median, all threads) "
            f"against {g['sequential_cpu_median_s'] * 1e3:.0f} ms for the sequential read of "
            f"the same bytes ({g['requests']} requests against 2); "
            + (
                "on a 2-core machine shared with other users a call waits for a core, so the "
                "read that needs more CPU loses most"
                if g["cpu_median_s"] > g["sequential_cpu_median_s"]
                else "so the gap is time the reader spent waiting, not computing"
            )
            + f". On loopback the same window took {loop[key]['seconds'] * 1e3:.0f} ms "
            f"(ratio {loop[key]['ratio']:.2f})."
        )
    for key, label in (("region", "300 rows"), ("region_tile", "whole tile")):
        g = lat[key]
        if g["median_ratio"] >= REGION_RATIO:
            continue
        usf = {
            k: np.median(np.asarray(v, dtype=float), axis=0)
            for k, v in g["user_sys_faults"].items()
        }
        rd, sq = usf["reader"], usf["sequential"]
        huge = rd[2] < 0.1 * sq[2] and rd[1] > sq[1]
        out.append(
            f"Region ({label}), typical calls: the best of {len(g['calls_s']['reader'])} calls "
            f"gives {g['ratio']:.2f}, but the median call takes "
            f"{g['median_s'] * 1e3:.0f} ms against {g['sequential_median_s'] * 1e3:.0f} ms "
            f"for the sequential read ({g['median_ratio']:.2f}; loopback "
            f"{loop[key]['median_ratio']:.2f}). Median per call, this reader: "
            f"{rd[0] * 1e3:.0f} ms user, {rd[1] * 1e3:.0f} ms kernel, {rd[2]:.0f} page faults; "
            f"the sequential read: {sq[0] * 1e3:.0f} ms user, {sq[1] * 1e3:.0f} ms kernel, "
            f"{sq[2]:.0f} page faults."
            + (
                " Few faults with much kernel time are huge pages: numpy asks for them "
                "(MADV_HUGEPAGE) on the reader's fresh window, and on a machine whose memory is "
                "fragmented each 2 MB fault is slow; the sequential read's bytearray takes 4 KB "
                "pages. Compare with `NUMPY_MADVISE_HUGEPAGE=0 python benchmarks/read_points.py`."
                if huge
                else ""
            )
        )
    if r["warm_bytes"] < POINT_BYTES <= (r["warm_wire_up"] or 0) + (r["warm_wire_down"] or 0):
        out.append(
            "Warm point bytes: nginx's answers are under 1 KiB; with the two requests (headers "
            "including the If-Unmodified-Since precondition) and TLS framing the exchange is over "
            "1 KiB in both directions."
        )
    errors = res.get("proxy_errors")
    if errors:
        out.append(
            f"The delay proxy logged {errors['count']} errors of its own "
            f"({'; '.join(errors['distinct'])}): passing a half-close on to a socket whose "
            "far end had already gone (`LatencyProxy._Direction._end`, `write_eof`). No read "
            "failed; each figure above comes from calls that returned their bytes."
        )
    rw = lat.get("rewrite")
    if rw:
        for key, label in (("region", "300 rows"), ("region_tile", "whole tile")):
            g, h = lat[key], rw[key]
            mine_wins = g["seconds"] <= h["seconds"]
            factor = max(g["seconds"], h["seconds"]) / min(g["seconds"], h["seconds"])
            kept = 1 / res["rewrite"]["compression_ratio"]
            out.append(
                f"Region ({label}) beside the rewritten store: "
                + ("this reader" if mine_wins else "the rewritten store")
                + f" is {factor:.1f}x faster. The rewritten store reads whole 256 x 256 inner "
                f"chunks: {h['bytes'] / 1e6:.0f} MB on the wire for a {g['nbytes'] / 1e6:.0f} MB "
                f"window ({h['requests']} requests), and zstd keeps {kept:.0%} of realistic "
                "quantised embeddings, so compression does not pay for reading whole chunks; this "
                "reader moves the window's rows and its neighbours' wedges "
                f"({g['wire_bytes'] / 1e6:.0f} MB, {g['requests']} requests). The rewritten store "
                "moves fewer bytes only where its chunks compress well (no-data or constant "
                "areas) or a window is aligned to its chunks."
            )
    return out


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=1000)
    ap.add_argument("--clustered", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=9, help="calls per figure (best of)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 60 tiles, fewer calls")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "read_points.json"))
    ap.add_argument(
        "--results-md", default=str(HERE / "RESULTS.md"),
        help="RESULTS.md whose read_points section to rewrite ('' to leave it)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.quick:
        args.tiles, args.clustered, args.repeat = min(args.tiles, 60), 1000, 2
    heavy = 1 if args.quick else 3
    ceiling_n = 4000 if args.quick else 20_000
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tvz-read-"))
    shutil.rmtree(work, ignore_errors=True)
    www = work / "www"
    src = www / TILES
    t0 = time.perf_counter()
    console.print(f"writing {args.tiles} sparse tiles under {src}")
    specs = make_tree(src, centres=centres(args.tiles), years=(YEAR,), bands=128, sparse=True)
    ca = make_test_ca(work / "ca")
    # Every client (aiohttp, obstore, Icechunk) reads SSL_CERT_FILE when it first connects.
    os.environ["SSL_CERT_FILE"] = str(ca.ca_cert)
    os.environ["TESSERA_VZ_CACHE"] = str(work / "cache")
    import zarr

    res: dict[str, Any] = {
        "config": {
            "machine": platform.platform(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"), "quick": args.quick, "tiles": len(specs),
            "repeat": args.repeat, "heavy_repeat": heavy, "zarr": zarr.__version__,
            "icechunk": ic.__version__,
        },
        "links": {},
    }  # fmt: skip
    with (
        NginxServer(www, tls=ca) as server,
        ProxyProcess(server.url, delay=0.010) as proxy,
    ):
        links = {
            "loopback": Link("loopback", server.url + f"{TILES}/", server),
            "latency": Link("+20 ms", proxy.url + f"{TILES}/", server, proxy),
        }
        indexes = {key: work / f"index-{key}" for key in links}
        for key, link in links.items():
            console.print(f"indexing against {link.url}")
            report = run_index(
                IndexOptions(source=link.url, out=str(indexes[key]),
                             manifest=str(src / "manifest.parquet"))
            )  # fmt: skip
            if report.failed:
                raise RuntimeError(f"indexing {link.url} failed for {len(report.failed)} tiles")
        tiles = open_store(str(indexes["loopback"])).tiles(YEAR, ZONE)
        w = workload(specs, tiles, args.clustered, args.repeat)
        grid = ZoneGrid.of(tiles)
        console.print("writing the rewritten store (the chunks the compared reads touch)")
        res["rewrite"] = write_rewrite(www / REWRITE, grid, rewrite_boxes(grid, w))
        sides = [
            Side(key, link, f"/{TILES}/", indexes[key],
                 RewrittenStore(link.url.removesuffix(f"{TILES}/") + f"{REWRITE}/"))
            for key, link in links.items()
        ]  # fmt: skip
        measure_links(sides, w, grid, repeat=args.repeat, heavy_repeat=heavy, ceiling_n=ceiling_n)
        res["links"] = {side.key: side.res for side in sides}
        console.print("single-range mirrors: nginx max_ranges 1 (+20 ms) and S3 (moto)")
        res["single_range"] = single_range.measure(
            www, TILES, ca, work, w, indexes["latency"], ceiling, ceiling_ranges,
            args.repeat, ceiling_n, multi_server=server,
        )  # fmt: skip
        for line in single_range.markdown(res["single_range"]):
            console.print(line, markup=False)
        errors = proxy.errors()
    if errors:
        # The proxy's own trouble (not the reader's): reported, never hidden.
        res["proxy_errors"] = {"count": len(errors), "distinct": sorted(set(errors))}
        console.print(f"[yellow]the latency proxy logged {len(errors)} errors: {set(errors)}[/]")
    res["config"]["seconds"] = time.perf_counter() - t0
    notes = notes_for(res)
    console.print(table(res, f"tessera-vz reads over HTTPS ({len(specs)} real-size tiles)"))
    for target, met, detail in verdicts(res):
        mark = "n/a" if met is None else ("[green]met[/]" if met else "[red]missed[/]")
        console.print(f"{mark}  {target}: {detail}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2, default=str))
    console.print(f"wrote {args.out} ({res['config']['seconds']:.0f} s in all)")
    if args.results_md:
        results_section.write(Path(args.results_md), markdown(res, notes))
        console.print(f"updated its section of {args.results_md}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
