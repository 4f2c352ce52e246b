"""The read benchmark's single-range part: nginx ``max_ranges 1`` and S3 beside multi-range.

Called by :mod:`read_points` with its tree, workload and +20 ms multi-range
side. It adds

* ``single +20 ms``: a second TLS nginx over the same tree with
  ``max_ranges 1`` (a multi-range request is answered 200 with the whole
  file, as by S3 and many CDNs), behind its own 20 ms delay proxy;
* ``s3 (moto)``: the tree uploaded to moto's S3 server on loopback (no
  added delay: moto is the ceiling there), read through obstore;

and on each of those and the multi-range +20 ms link measures: the
request ceiling (128-byte reads/s, 64 in flight, the reader's client
stack); clustered points as ranges/s (two ranges a point) against that
ceiling; the 300-row full-width region against one sequential read of the
same rows; the peak memory of the clustered read (tracemalloc); and, on the
single-range mirror, how many whole-file answers nginx logged (only the
first multi-range request may get one).
"""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

from links import Link, ProxyProcess
from zarr.core.sync import sync

from tessera_vz.core.urls import join
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.s3 import MotoS3

YEAR = 2024
ZONE = 31


def _best(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


async def sequential_rows(files: Any, facts: Any, rows: int) -> None:
    """The physical limit of a full-width window: the tile's first ``rows`` rows of both
    files, one ranged GET each (issued together), through the reader's client."""
    width, source = int(facts.width), str(facts.source.item())
    e0, s0 = int(facts.emb_offset), int(facts.scales_offset)
    await asyncio.gather(
        files.get(join(source, str(facts.emb_path.item())), e0, e0 + rows * width * 128,
                  str(facts.emb_checksum.item()), "sequential", int(facts.emb_size)),
        files.get(join(source, str(facts.scales_path.item())), s0, s0 + rows * width * 4,
                  str(facts.scales_checksum.item()), "sequential", int(facts.scales_size)),
    )  # fmt: skip


def figures(
    store: Any, w: Any, ceiling: Any, ceiling_ranges: Any, repeat: int, n: int,
    sites: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Ceiling, clustered points, the 300-row region and memory, through ``store``.

    ``sites`` keeps the clustered points of that many sites only (S3: moto
    reads the whole object for every ranged GET, ~0.1 s each for a real-size tile).
    """
    files, table = store.source_files(), store.tiles(YEAR, ZONE)
    top = ceiling(files, ceiling_ranges(table), n)
    lons, lats = w.clustered
    if sites is not None:
        lons, lats = lons[: sites * w.per_tile], lats[: sites * w.per_tile]
    store.points(lons, lats, YEAR)  # warm: connections, and the origin's lesson
    pts = _best(lambda: store.points(lons, lats, YEAR), repeat)
    tracemalloc.start()
    store.points(lons, lats, YEAR)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    bbox, rows = w.regions["region"]
    facts = table.sel(tile=w.spec.name)
    reg = store.region(bbox, YEAR, dequantise=False)
    nbytes = int(reg.embeddings.nbytes + reg.scales.nbytes)
    region_s = _best(lambda: store.region(bbox, YEAR, dequantise=False), repeat)
    seq_s = _best(lambda: sync(sequential_rows(files, facts, rows)), repeat)
    ranges_per_s = 2 * lons.size / pts
    return {
        "ceiling_per_s": top,
        "clustered_points": int(lons.size),
        "clustered_points_per_s": lons.size / pts,
        "clustered_ranges_per_s": ranges_per_s,
        "clustered_ratio": ranges_per_s / top,
        "clustered_peak_mb": peak / 1e6,
        "clustered_answer_mb": lons.size * 128 * 4 / 1e6,
        "region_mb_per_s": nbytes / region_s / 1e6,
        "sequential_mb_per_s": nbytes / seq_s / 1e6,
        "region_ratio": seq_s / region_s,
    }


#: The most tile files the S3 (moto) row uploads (a --quick tree has 120).
S3_MAX_FILES = 200


def measure(
    www: Path, tiles: str, ca: Any, work: Path, w: Any, multi_index: Path,
    ceiling: Any, ceiling_ranges: Any, repeat: int, n: int,
) -> dict[str, Any]:  # fmt: skip
    """The single-range part's results, keyed by mirror."""
    src = www / tiles
    manifest = str(src / "manifest.parquet")
    out: dict[str, Any] = {}
    out["multi +20 ms"] = figures(
        open_store(str(multi_index)), w, ceiling, ceiling_ranges, repeat, n
    )
    print("multi +20 ms", out["multi +20 ms"], flush=True)
    with (
        NginxServer(www, tls=ca, max_ranges=1) as server,
        ProxyProcess(server.url, delay=0.010) as proxy,
    ):
        link = Link("single +20 ms", proxy.url + f"{tiles}/", server, proxy)
        index = work / "index-single"
        assert (
            run_index(IndexOptions(source=link.url, out=str(index), manifest=manifest)).exit_code
            == 0
        )
        server.clear_log()
        res = figures(open_store(str(index)), w, ceiling, ceiling_ranges, repeat, n)
        log = server.requests()
        res["whole_file_answers"] = sum(1 for r in log if r["status"] == 200)
        res["multi_range_requests"] = sum(1 for r in log if "," in (r["range"] or ""))
        out["single +20 ms"] = res
        print("single +20 ms", res, flush=True)
    tile_files = sum(1 for _ in src.rglob("*.npy"))
    if tile_files > S3_MAX_FILES:
        # moto keeps every uploaded byte (the sparse tiles become ~120 MB each on disk): a
        # 1,000-tile tree filled a 250 GB disk. The S3 row is measured on --quick trees.
        print(f"s3 (moto): skipped, {tile_files} files > {S3_MAX_FILES}; run with --quick")
        out["s3 (moto)"] = {"skipped": f"{tile_files} tile files; moto stores them whole"}
        return out
    with MotoS3() as s3:
        saved = {k: os.environ.get(k) for k in s3.env()}
        os.environ.update(s3.env())
        try:
            s3.upload_tree(src, "tiles", "tessera/v1")
            source = "s3://tiles/tessera/v1"
            index = work / "index-s3"
            opts = IndexOptions(
                source=source, out=str(index), manifest=f"{source}/manifest.parquet"
            )
            assert run_index(opts).exit_code == 0
            out["s3 (moto)"] = figures(
                open_store(str(index)), w, ceiling, ceiling_ranges, repeat, n
            )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return out


def markdown(res: dict[str, Any]) -> list[str]:
    """The part's table for RESULTS.md."""
    lines = [
        "### Mirrors that serve one range per request",
        "",
        "| mirror | ceiling (requests/s) | clustered ranges/s | / ceiling | region MB/s "
        "| / sequential | peak MB (answer MB) | whole-file answers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in res.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} | | | | | | |")
            continue
        lines.append(
            f"| {name} | {r['ceiling_per_s']:,.0f} | {r['clustered_ranges_per_s']:,.0f} "
            f"| {r['clustered_ratio']:.2f} | {r['region_mb_per_s']:.0f} "
            f"| {r['region_ratio']:.2f} | {r['clustered_peak_mb']:.0f} "
            f"({r['clustered_answer_mb']:.1f}) | {r.get('whole_file_answers', '-')} |"
        )
    lines += [
        "",
        "S3 is moto on loopback (no added delay), in the benchmark's process; moto reads the "
        "whole object for every ranged GET, so its ceiling is low and only two sites' "
        "clustered points are read there (one call). Peak: tracemalloc over one clustered "
        "call; answer: the points' embeddings as float32.",
    ]
    return lines
