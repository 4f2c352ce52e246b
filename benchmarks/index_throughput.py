"""Indexing throughput: tiles per second, bytes read per tile, peak memory, where time goes.

A script a person runs (``make bench`` or ``python benchmarks/index_throughput.py``),
not a timed test. It generates a sparse tree of real-size tiles (128 bands,
real geometry, headers written and data left as holes), then measures in one
run on this machine:

* the floor: header probes alone (one ranged GET per file, no writes);
* the naive baseline: one tile group written with zarr's ``create_array``
  plus per-array virtual refs, for a subset, as most virtualisation code does;
* the full ``tessera-vz index`` run in a child process (commit included), its
  peak memory, and the report's own breakdown of where the time goes;
* the same index over HTTPS (nginx with TLS) for a subset, on loopback and
  through a streaming +20 ms delay proxy (:mod:`links`), each in a child
  process: tiles/s, peak memory, requests and bytes on the wire per file;
* the repository it produced: objects, bytes, references, bytes per reference.

Prints a table, writes ``benchmarks/results/index_throughput.json`` and its
section of ``benchmarks/RESULTS.md`` (``--no-results`` leaves RESULTS.md alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import results_section
from rich.console import Console
from rich.table import Table

from tessera_vz.core.layout import source_paths
from tessera_vz.indexer.probe import probe_all
from tessera_vz.indexer.roots import source_reader, source_root
from tessera_vz.reader import ReadOptions, open_store
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import make_tree

console = Console()


def zone_centres(n: int, zone: int = 31, lat0: float = 40.0) -> list[tuple[float, float]]:
    """``n`` cell centres filling one UTM zone row by row from ``lat0`` north."""
    west = (zone - 1) * 6 - 180
    lons = [round(west + 0.05 + 0.1 * i, 2) for i in range(60)]
    out: list[tuple[float, float]] = []
    row = 0
    while len(out) < n:
        lat = round(lat0 + 0.05 + 0.1 * row, 2)
        out.extend((lon, lat) for lon in lons[: n - len(out)])
        row += 1
    return out


def tree_stats(path: Path) -> dict[str, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    count: dict[str, int] = {}
    size: dict[str, int] = {}
    for p in files:
        parts = p.relative_to(path).parts
        top = parts[0] if len(parts) > 1 else "other"
        count[top] = count.get(top, 0) + 1
        size[top] = size.get(top, 0) + p.stat().st_size
    return {
        "objects": len(files),
        "bytes": sum(size.values()),
        **{f"objects_{k}": v for k, v in sorted(count.items())},
        **{f"bytes_{k}": v for k, v in sorted(size.items())},
    }


def index_in_child(
    src: Path | str, out: str, env: dict[str, str] | None = None, extra: list[str] | None = None
) -> dict[str, Any]:
    """Run ``tessera-vz index`` in a child process: its report, wall time, CPU and peak RSS.

    Peak RSS is the largest of any child so far (``RUSAGE_CHILDREN``), so the
    runs that must be compared are made smallest first.
    """
    cmd = [sys.executable, "-m", "tessera_vz.cli", "index", str(src), "--out", out, "--json",
           "--quiet", *(extra or [])]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"index failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "report": json.loads(proc.stdout),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def repo_stats(out: Path, tiles: int, zone: int = 31, year: int = 2024) -> dict[str, Any]:
    """Objects, bytes and references of a zone repository an index run wrote."""
    table = open_store(str(out), allow_local_sources=True).tiles(year, zone)
    refs = int(
        ((table.height // table.emb_chunk_rows) + (table.height // table.scales_chunk_rows)).sum()
    )
    repo = tree_stats(out / f"utm{zone:02d}.icechunk")
    return {
        **repo,
        "references": refs,
        "bytes_per_tile": repo["bytes"] / tiles,
        "bytes_per_reference": repo["bytes"] / refs,
        "manifest_bytes_per_reference": repo.get("bytes_manifests", 0) / refs,
        "references_per_tile": refs / tiles,
        "tiles_with_one_row_chunks": int((table.emb_chunk_rows == 1).sum()),
    }


def naive_baseline(src: Path, specs: list[Any], out: Path) -> float:
    """Seconds per tile writing groups the usual way (create_array per array)."""
    import icechunk as ic
    import zarr

    from tessera_vz.core.npy import PROBE_BYTES, parse_header
    from tessera_vz.indexer.parser import row_chunk_ranges, row_chunk_shape

    ic.set_logs_filter("error")
    cfg = ic.RepositoryConfig.default()
    url = src.resolve().as_uri() + "/"
    cfg.set_virtual_chunk_container(
        ic.VirtualChunkContainer(url, ic.local_filesystem_store(str(src)))
    )
    repo = ic.Repository.create(ic.local_filesystem_storage(str(out)), config=cfg)
    session = repo.writable_session("main")
    root = zarr.open_group(session.store, mode="a")
    t0 = time.perf_counter()
    for spec in specs:
        g = root.create_group(spec.name)
        for rel, name, dims in (
            (spec.emb_path, "embeddings", ("y", "x", "band")),
            (spec.scales_path, "scales", ("y", "x")),
        ):
            with open(src / rel, "rb") as f:
                header = parse_header(f.read(PROBE_BYTES))
            g.create_array(
                name,
                shape=header.shape,
                dtype=header.dtype,
                chunks=row_chunk_shape(header),
                dimension_names=dims,
                compressors=None,
                filters=None,
                fill_value=0,
            )
            grid, offsets, lengths = row_chunk_ranges(header)
            session.store.set_virtual_refs_arr(
                f"{spec.name}/{name}", grid, [url + rel] * len(offsets), offsets, lengths
            )
        g.create_array("y", data=np.arange(spec.height, dtype="f8"))
        g.create_array("x", data=np.arange(spec.width, dtype="f8"))
        g.create_array("band", data=np.arange(spec.bands, dtype="i2"))
    session.commit("naive")
    return (time.perf_counter() - t0) / len(specs)


def https_runs(src: Path, subset: list[Any], work: Path) -> dict[str, Any]:
    """Index ``subset`` over HTTPS from its manifest, on loopback and at +20 ms, in children."""
    from links import ProxyProcess

    from tessera_vz.testing.tiles import write_manifest
    from tessera_vz.testing.tls import make_test_ca

    ca = make_test_ca(work / "ca")
    env = {**os.environ, "SSL_CERT_FILE": str(ca.ca_cert)}
    manifest = work / "subset.parquet"
    write_manifest(src, subset, path=manifest)
    out: dict[str, Any] = {}
    with NginxServer(src, tls=ca) as server, ProxyProcess(server.url, delay=0.010) as proxy:
        for key, url in (("loopback", server.url), ("+20 ms", proxy.url)):
            server.clear_log()
            run = index_in_child(
                url, str(work / f"https-index-{len(out)}"), env=env,
                extra=["--manifest", str(manifest)],
            )  # fmt: skip
            reqs = [r for r in server.requests() if r["uri"].endswith(".npy")]
            rep = run["report"]
            out[key] = {
                "tiles": len(subset),
                "indexed": rep["indexed"],
                "seconds": run["wall_s"],
                "cpu_s": run["cpu_s"],
                "tiles_per_s": rep["indexed"] / run["wall_s"],
                "peak_rss_mb": run["peak_rss_mb"],
                "timings": rep["timings"],
                "requests_per_file": len(reqs) / (2 * len(subset)),
                "wire_bytes_per_file": sum(r["bytes_sent"] for r in reqs) / (2 * len(subset)),
            }
    return out


HERE = Path(__file__).parent
OWNER = "index_throughput.py"

#: The same script's figures before issue 23 (main at 0f29da6, 2,000 tiles, local
#: disk, 2026-12-07): kept as history, since a run measures only the code it runs.
BEFORE = (
    "Before issue 23's index-size work (main at 0f29da6, same 2,000-tile tree, local "
    "disk): 26,252 bytes and 6.03 objects per tile (coordinate chunks 2.01 objects and "
    "15,858 B, manifests 4.01 and 7,065 B, snapshots 562 B, transaction logs 2,761 B), "
    "CPU 15.3 s, peak 793 MB. At 7,000 tiles (scale.py, 2026-12-02): 31,731 B and 7.01 "
    "objects per tile, peak 1,252 MB. After, at 7,000 tiles in seven batches (local, "
    "2026-12-07, load ~10): 9,903 B and 4.01 objects per tile (manifests 7,676 B, "
    "transaction log 1,780 B, snapshot 400 B), CPU 61 s (115 tiles per CPU-second), "
    "peak 1,365 MB: over 1 GB because each amend rebuilds the unit's cumulative "
    "transaction log (~18 kB a tile before compression), so the last batches' commits "
    "hold the whole unit's."
)


LARGE_UNITS = (
    "One large unit (issue 23 item 2: memory per worker; `python benchmarks/unit_memory.py "
    "--tiles 7000 20000`, sparse real-size tiles of one zone-year, local disk, batches of "
    "1,000, each run in a child process, 2026-12-07, load 5-10):\n\n"
    "| unit | writer | peak RSS | CPU | tiles per CPU-second | bytes per tile | "
    "objects per tile |\n"
    "| --- | --- | --- | --- | --- | --- | --- |\n"
    "| 7,000 tiles | before: batches amend (main c673ed6) | 1,328 MB | 65.4 s | 107 | "
    "9,904 | 4.01 |\n"
    "| 7,000 tiles | after: batches committed, then folded | 804 MB | 51.9 s | 135 | "
    "9,911 | 4.01 |\n"
    "| 20,000 tiles | before (cache raised to 500,000 nodes, else it stalls) | 3,236 MB | "
    "247 s | 81 | 9,152 | 4.005 |\n"
    "| 20,000 tiles | after | 1,066 MB | 157 s | 128 | 9,139 | 4.006 |\n\n"
    "Before, each batch amended the scratch commit, and each amend rebuilt the transaction "
    "log of every change since the year's previous tip (~18 kB a tile before compression, "
    "merged in memory): peak memory grew ~110 kB per tile already written, and the commit "
    "time with it (commit 361 s of the 20,000-tile run). Now, under the zone's lock, each "
    "batch is an ordinary commit whose log holds only its batch, and Icechunk's garbage "
    "collection folds the chain before the year branch moves (it drops the intermediate "
    "snapshots and re-parents the last onto the year's previous tip, keeping the batches' "
    "logs as its history): one snapshot and one tag per run as before, `diff` between tags "
    "whole, the same bytes and objects per tile (one log per batch instead of one per run: "
    "+19 objects for 20 batches). Folding costs one garbage collection per multi-batch "
    "unit (17 s of the 20,000-tile run; it reads every reachable snapshot and manifest of "
    "the zone, so it grows with the zone's history). S3 repositories have no lock and "
    "still amend. Two more causes found on the way: Icechunk never caches a snapshot "
    "heavier than its snapshot cache, and the writer's 100,000 nodes (~6 a tile) stopped "
    "fitting at ~16,500 tiles: every node lookup of the next batch decoded the 117 MB "
    "snapshot again (the 20,000-tile run stalled for minutes in batch 18, both before and "
    "after); the cache is now sized to the unit, in a repository opened anew because "
    "`Repository.reopen` keeps the old asset manager (so the draft compression level of "
    "the intermediate batches never applied either; it is gone). What still grows, ~20 kB "
    "per tile of the unit: the year's snapshot, decoded ~6 kB a tile (mostly the nodes' "
    "Zarr documents: attributes, and the CRS WKT in `spatial_ref`'s), held by the "
    "cache and again while each commit writes the next (batches of 500 instead: peak "
    "983 MB at 20,000 tiles, sampled every 0.5 s, in the last commit). A 30,000-tile "
    "zone-year extrapolates to ~1.3 GB: under the 1 GB target "
    "needs smaller snapshot nodes (documents.py), not smaller batches."
)


def markdown(results: dict[str, Any]) -> str:
    """The RESULTS.md section of a run: throughput, memory, bytes and objects per tile."""
    ix, r = results["index"], results["repo"]
    n = results["tiles"]
    kinds = ("manifests", "chunks", "snapshots", "transactions")
    rows = [
        ("local disk", ix["indexed"], ix["wall_s"], ix["cpu_s"], ix["peak_rss_mb"]),
        *(
            (f"HTTPS {key}", h["indexed"], h["seconds"], h["cpu_s"], h["peak_rss_mb"])
            for key, h in results["http"].items()
        ),
    ]
    lines = [
        "## Index size and throughput",
        "",
        f"Generated by `python benchmarks/index_throughput.py --tiles {n}` on "
        f"{results['machine']} ({results['cpus']} cores, shared: wall times move with the "
        f"load, CPU seconds much less), {time.strftime('%Y-%m-%d')}. Sparse real-size tiles "
        "(128 bands) of one zone-year, indexed from the manifest; HTTPS is a TLS nginx, "
        "+20 ms a streaming delay proxy in front of it; each run in a child process.",
        "",
        "| run | tiles | wall | tiles/s | CPU | tiles per CPU-second | peak RSS |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {name} | {k} | {w:.1f} s | {k / w:.0f} | {c:.1f} s | {k / c:.0f} | {m:.0f} MB |"
            for name, k, w, c, m in rows
        ),
        "",
        "| repository (local run) | per tile | " + " | ".join(kinds) + " |",
        "| --- | --- | " + " | ".join("---" for _ in kinds) + " |",
        f"| bytes | {r['bytes_per_tile']:,.0f} | "
        + " | ".join(f"{r.get(f'bytes_{k}', 0) / n:,.0f}" for k in kinds)
        + " |",
        f"| objects | {r['objects'] / n:.2f} | "
        + " | ".join(f"{r.get(f'objects_{k}', 0) / n:.2f}" for k in kinds)
        + " |",
        "",
        f"References per tile: {r['references_per_tile']:.0f} "
        f"({r['tiles_with_one_row_chunks']} tiles have 1-row chunks); manifest bytes per "
        f"reference {r['manifest_bytes_per_reference']:.1f}. Time in the local run: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in ix["timings"].items())
        + ".",
        "",
        BEFORE,
        "",
        LARGE_UNITS,
        "",
        "Targets (issue 23): >= 300 tiles/s on 2 cores, < 1 GB per worker, <= 10 kB and "
        "<= 1 object per tile. Icechunk 2.3 writes one manifest per array per commit "
        "(`flush_new_node` in its session.rs; the format allows several arrays per manifest, "
        "no writer makes one), so four arrays with chunks (embeddings, scales, y, x) are a "
        "floor of four objects a tile, two if the coordinate arrays went (and with them "
        "`xr.open_zarr`'s coordinates). Each commit's cost is mostly per manifest "
        "(building, zstd, one file), so the same floor bounds throughput.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=5000)
    ap.add_argument("--http-tiles", type=int, default=300)
    ap.add_argument("--naive-tiles", type=int, default=200)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "index_throughput.json")
    )
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tvz-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    src = work / "tiles"
    results: dict[str, Any] = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "tiles": args.tiles,
    }

    t = time.perf_counter()
    specs = make_tree(src, centres=zone_centres(args.tiles), years=(2024,), bands=128, sparse=True)
    results["generate_s"] = time.perf_counter() - t

    # Floor: the probes alone.
    root = source_root(str(src))
    files = source_reader(root, ReadOptions(allow_local_sources=True))
    paths = [p for s in specs for p in source_paths(s.year, s.name)]
    t = time.perf_counter()
    probes = asyncio.run(probe_all(files, root, paths, concurrency=64))
    probe_s = time.perf_counter() - t
    results["probe_only"] = {
        "seconds": probe_s,
        "files": len(paths),
        "tiles_per_s": len(specs) / probe_s,
        "errors": sum(1 for p in probes.values() if not hasattr(p, "header")),
    }

    # Naive baseline on a subset.
    naive = naive_baseline(src, specs[: args.naive_tiles], work / "naive.icechunk")
    results["naive_create_array"] = {
        "tiles": args.naive_tiles,
        "s_per_tile": naive,
        "tiles_per_s": 1 / naive,
    }

    # Full run, in a child process so its peak memory is its own.
    out = work / "index"
    try:
        run = index_in_child(src, str(out))
    except RuntimeError as exc:
        console.print(str(exc))
        return 2
    report = run["report"]
    results["index"] = {
        "wall_s": run["wall_s"],
        "tiles_per_s": report["indexed"] / run["wall_s"],
        "indexed": report["indexed"],
        "cpu_s": run["cpu_s"],
        "failed": len(report["failed"]),
        "bytes_read_per_file": report["bytes_read"] / max(1, report["requests"]),
        "requests": report["requests"],
        "peak_rss_mb": run["peak_rss_mb"],
        "timings": report["timings"],
    }
    results["repo"] = repo_stats(out, len(specs))

    # Over HTTPS (TLS nginx), on loopback and through a +20 ms link, from the manifest.
    results["http"] = https_runs(src, specs[: args.http_tiles], work)

    ix = results["index"]
    tm = ix["timings"]
    tab = Table(
        title=f"tessera-vz index: {args.tiles} real-size tiles (sparse), {os.cpu_count()} cores"
    )
    tab.add_column("measure")
    tab.add_column("value", justify="right")
    tab.add_column("note")
    tab.add_row(
        "index tiles/s (commit included)",
        f"{ix['tiles_per_s']:.0f}",
        f"{ix['wall_s']:.1f} s wall, CPU {ix['cpu_s']:.1f} s",
    )
    tab.add_row(
        "  floor: header probes only",
        f"{results['probe_only']['tiles_per_s']:.0f}",
        f"{results['probe_only']['seconds']:.2f} s for {len(paths)} files",
    )
    tab.add_row(
        "  baseline: create_array per array",
        f"{results['naive_create_array']['tiles_per_s']:.0f}",
        f"ours/naive = {ix['tiles_per_s'] / results['naive_create_array']['tiles_per_s']:.1f}x",
    )
    for key in ("probe", "validate", "write_metadata", "write_refs", "write_table", "commit"):
        tab.add_row(
            f"  time in {key}",
            f"{tm.get(key, 0):.2f} s",
            f"{1000 * tm.get(key, 0) / max(1, ix['indexed']):.2f} ms/tile",
        )
    tab.add_row("peak RSS of the run", f"{ix['peak_rss_mb']:.0f} MB", "child process max RSS")
    tab.add_row(
        "bytes read per file (local)", f"{ix['bytes_read_per_file']:.0f}", "one ranged read"
    )
    for key, h in results["http"].items():
        tab.add_row(
            f"HTTPS {key}: tiles/s",
            f"{h['tiles_per_s']:.0f}",
            f"{h['indexed']} tiles in {h['seconds']:.1f} s, CPU {h['cpu_s']:.1f} s, "
            f"peak {h['peak_rss_mb']:.0f} MB, {h['requests_per_file']:.2f} req/file",
        )
    r = results["repo"]
    kinds = ("manifests", "chunks", "snapshots", "transactions")
    tab.add_row(
        "repo bytes per tile",
        f"{r['bytes_per_tile']:.0f}",
        ", ".join(f"{k} {r.get(f'bytes_{k}', 0) / args.tiles:.0f}" for k in kinds),
    )
    tab.add_row(
        "repo objects per tile",
        f"{r['objects'] / args.tiles:.2f}",
        ", ".join(f"{k} {r.get(f'objects_{k}', 0) / args.tiles:.2f}" for k in kinds),
    )
    tab.add_row(
        "references per tile",
        f"{r['references_per_tile']:.0f}",
        f"{r['tiles_with_one_row_chunks']} tiles: 1-row chunks (no divisor of H fits 1 MiB)",
    )
    tab.add_row(
        "manifest bytes per reference",
        f"{r['manifest_bytes_per_reference']:.1f}",
        f"all repo bytes / refs: {r['bytes_per_reference']:.1f} (coordinate chunks "
        f"{r.get('objects_chunks', 0)} objects, {r.get('bytes_chunks', 0) / 2**20:.0f} MiB)",
    )
    console.print(tab)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    if not args.no_results:
        results_section.write(HERE / "RESULTS.md", markdown(results), OWNER)
    console.print(f"wrote {args.out}; work dir {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
