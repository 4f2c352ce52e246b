"""xarray users' reads over HTTPS + 20 ms: a whole tile through ``xr.open_zarr``, ``open_tile``
and ``open_zone`` against ``region`` for the same pixels, and one pixel's bytes.

A script a person runs: ``python benchmarks/xarray_read.py`` (``--quick``:
one call per figure). One TLS nginx serves real-size sparse tiles (128
bands; data regions are holes that read as zeros, which moves real bytes);
a streaming delay proxy in a child process (:mod:`links`) adds 10 ms each
way. The tiles are indexed against the proxy's URL. Each figure is the best
of ``--repeat`` calls; requests and bytes come from nginx's access log.

* ``xr.open_zarr``: the plain user path — ``ic.Repository.open`` with the
  repository's own config, ``xr.open_zarr(session.store, group=tile)``,
  ``.embeddings.values``;
* ``open_tile`` / ``open_zone``: this package's lazy datasets, ``.values``
  of their embeddings (raw int8: ``dequantise=False`` where offered);
* ``region``: the same tile's cell, ``dequantise=False``;
* a single pixel through ``xr.open_zarr``: bytes nginx sent.

Prints a table and writes ``benchmarks/results/xarray_read.json``; the
RESULTS.md section is written by hand from it (with the chunk rows of the
global grid: :mod:`chunk_rows_global`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import icechunk as ic
import xarray as xr
import zarr
from links import ProxyProcess

from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.reader.tile_chunks import tile_chunks
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import make_tree
from tessera_vz.testing.tls import make_test_ca

HERE = Path(__file__).resolve().parent
YEAR = 2024
#: A real height with no divisor within the 1 MiB budget (H = 1111 = 11 x 101:
#: one-row chunks under the divisor rule) and one with (H = 1132: 4 rows).
CENTRES = [(3.05, 45.05), (0.85, 49.95)]


def plain_dataset(index: Path, name: str, zone: int, chunks: Any = None) -> xr.Dataset:
    """A tile as plain ``xr.open_zarr`` users open it: the repository's own config."""
    storage = ic.local_filesystem_storage(str(index / f"utm{zone:02d}.icechunk"))
    config = ic.Repository.fetch_config(storage)
    prefixes = list((config.virtual_chunk_containers if config else None) or {})
    repo = ic.Repository.open(
        storage, authorize_virtual_chunk_access={p: ic.credentials.HttpAccess for p in prefixes}
    )
    store = repo.readonly_session(branch=str(YEAR)).store
    if chunks is None:  # xarray's default, chunks={}: one dask task per virtual chunk
        return xr.open_zarr(store, group=name)
    return xr.open_zarr(store, group=name, chunks=chunks)


def timed(server: NginxServer, fn: Callable[[], Any], repeat: int) -> dict[str, Any]:
    """Best of ``repeat`` calls, with the requests and bytes of the last."""
    best = float("inf")
    for _ in range(repeat):
        server.clear_log()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    time.sleep(0.2)
    log = server.requests()
    return {"s": best, "requests": len(log), "bytes": sum(int(r["bytes_sent"]) for r in log)}


def concurrently(n: int, fn: Callable[[], Any]) -> Any:
    """``fn()`` with zarr's ``async.concurrency`` at ``n``."""
    with zarr.config.set({"async.concurrency": n}):
        return fn()


def threads(n: int, fn: Callable[[], Any]) -> Any:
    """``fn()`` with dask's threaded scheduler running ``n`` tasks at once."""
    with dask.config.set(scheduler="threads", num_workers=n):
        return fn()


def tile_figures(
    server: NginxServer, store: Any, index: Path, spec: Any, row: Any, repeat: int
) -> dict[str, Any]:
    """Every figure of one tile: the same pixels read each way."""
    h, w = int(row["height"]), int(row["width"])
    bbox = (spec.lon - 0.05, spec.lat - 0.05, spec.lon + 0.05, spec.lat + 0.05)
    ds = plain_dataset(index, spec.name, 31)
    chunks, mid = tile_chunks(row), (h // 2, w // 2)
    left, top = float(row["left"]), float(row["top"])
    box = {"x": slice(left, left + 10 * w), "y": slice(top, top - 10 * h)}
    calls: dict[str, Callable[[], Any]] = {
        "region": lambda: store.region(bbox, YEAR, dequantise=False).embeddings.values,
        "xr.open_zarr": lambda: plain_dataset(index, spec.name, 31).embeddings.values,
        # Levers a plain user's default path could meet: zarr's concurrency (each
        # dask task reads one chunk, so it has nothing to overlap), and dask's
        # thread count (the tasks in flight: 2 on this machine by default).
        "xr.open_zarr, concurrency 64": lambda: concurrently(
            64, lambda: plain_dataset(index, spec.name, 31).embeddings.values
        ),
        "xr.open_zarr, dask num_workers 32": lambda: threads(
            32, lambda: plain_dataset(index, spec.name, 31).embeddings.values
        ),
        "xr.open_zarr, chunks=": lambda: concurrently(
            10, lambda: plain_dataset(index, spec.name, 31, chunks).embeddings.values
        ),
        "xr.open_zarr, chunks=, concurrency 64": lambda: concurrently(
            64, lambda: plain_dataset(index, spec.name, 31, chunks).embeddings.values
        ),
        "open_tile": lambda: store.open_tile(spec.lon, spec.lat, YEAR).embeddings.values,
        "open_zone": lambda: store.open_zone(31, YEAR, dequantise=False).embeddings.sel(box).values,
        "pixel (xr.open_zarr)": lambda: ds.embeddings[mid].values,
    }
    figures = {label: timed(server, fn, repeat) for label, fn in calls.items()}
    return {"height": h, "width": w, "chunk_rows": int(row["emb_chunk_rows"]),
            "dask_rows": chunks["y"], **figures}  # fmt: skip


def run(work: Path, repeat: int) -> dict[str, Any]:
    ca = make_test_ca(work / "ca")
    os.environ["SSL_CERT_FILE"] = str(ca.ca_cert)
    os.environ["TESSERA_VZ_CACHE"] = str(work / "cache")
    root = work / "tree"
    specs = make_tree(root, centres=CENTRES, years=(YEAR,), bands=128, sparse=True)
    out: dict[str, Any] = {"tiles": {}}
    with NginxServer(root, tls=ca) as server, ProxyProcess(server.url, delay=0.010) as proxy:
        index = work / "index"
        opts = IndexOptions(
            source=proxy.url, out=str(index), manifest=str(root / "manifest.parquet")
        )
        assert run_index(opts).exit_code == 0
        store = open_store(str(index))
        table = store.tiles(YEAR, 31)
        for spec in specs:
            row = table.sel(tile=spec.name)
            figures = tile_figures(server, store, index, spec, row, repeat)
            out["tiles"][spec.name] = figures
            print(spec.name, json.dumps(out["tiles"][spec.name]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one call per figure")
    ap.add_argument("--label", default="now", help="the key the figures are stored under")
    ap.add_argument("--out", default=str(HERE / "results" / "xarray_read.json"))
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="xarray-read-"))
    try:
        res = run(work, 1 if args.quick else args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = Path(args.out)
    old = json.loads(path.read_text()) if path.exists() else {}
    old[args.label] = res
    path.write_text(json.dumps(old, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
