"""The index step of ``world.py`` alone: tiles/s and where the CPU goes, workers and server.

A script a person runs, not a timed test. It builds (or, with ``--work``,
reuses) the simulated year of ``world.py``, serves it over HTTPS + 20 ms from
the computing world server, and indexes it from the manifest on a Dask
``LocalCluster``, measuring what ``world.py`` does not: the CPU seconds of the
workers and of the server (process CPU time against wall time) beside the
index report's phases (wall and ``cpu_*``). ``--profile 34,35`` instead runs
those zones' units in this process (under cProfile unless ``--top 0``), and
``--set repository.COMMIT_CONCURRENCY=8`` patches a constant of the indexer
there, to compare settings. Compare before/after in one session, alternating
(``PYTHONPATH`` of the other checkout for "before"): the machine is shared.

    python benchmarks/world_index.py --cells 20000 --work /tmp/world20k --label after \
        --out /tmp/world20k/runs.json
"""

from __future__ import annotations

import argparse
import ast
import cProfile
import importlib
import json
import os
import pstats
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.testing.tls import make_test_ca
from tessera_vz.testing.world.cells import World, make_world
from tessera_vz.testing.world.manifest import DATASET_DIR, write_world_manifest
from tessera_vz.testing.world.process import WorldServer

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from world import STRIP_LAT_I, STRIP_LON_I, YEAR, tree_stats  # noqa: E402


def world_in(work: Path, cells: int) -> tuple[World, Path, Path]:
    """The world of ``cells`` land cells in ``work`` (built once, then reused)."""
    world_file, dataset_dir = work / "world.npz", work / "npy" / DATASET_DIR
    if world_file.exists() and (dataset_dir / "manifest.parquet").exists():
        world = World.load(world_file)
        if len(world) >= cells:
            return world, world_file, dataset_dir
    strip = (STRIP_LON_I, np.full(STRIP_LON_I.size, STRIP_LAT_I))
    world = make_world(cells, YEAR, include=strip)
    world.save(world_file)
    write_world_manifest(world, dataset_dir)
    return world, world_file, dataset_dir


def _cpu() -> float:
    """CPU seconds (user + system) of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(ln.split()[1]) * 1024 for ln in status if ln.startswith("VmHWM:"))


def cluster_run(
    opts: IndexOptions, srv: WorldServer, workers: int, threads: int = 1
) -> dict[str, Any]:
    """Index on a LocalCluster of ``workers`` processes; wall, CPU of workers and server."""
    from distributed import Client, LocalCluster

    server = psutil.Process(srv._proc.pid)  # type: ignore[union-attr]
    with (
        LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                     dashboard_address=None, memory_limit=0) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        opts.scheduler = cluster.scheduler_address
        w0 = client.run(_cpu)
        s0 = sum(server.cpu_times()[:2])
        me0 = _cpu()
        srv.reset()
        t = time.perf_counter()
        report = run_index(opts)
        wall = time.perf_counter() - t
        w1 = client.run(_cpu)
        s1 = sum(server.cpu_times()[:2])
        peaks = sorted(client.run(_peak).values())
    doc = report.to_json()
    worker_cpu = sum(w1[k] - w0[k] for k in w1)
    return {
        "wall_s": wall,
        "indexed": doc["indexed"],
        "failed": len(doc["failed"]),
        "tiles_per_s": doc["indexed"] / wall,
        "worker_cpu_s": worker_cpu,
        "worker_util": worker_cpu / (wall * workers),
        "server_cpu_s": s1 - s0,
        "client_cpu_s": _cpu() - me0,
        "worker_peak_rss_gib": [p / 2**30 for p in peaks],
        "timings": doc["timings"],
        "server": srv.stats(),
    }


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's live threads, summed by thread name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def profile_units(opts: IndexOptions, zones: list[int], top: int) -> None:
    """Run these zones' units in this process (under cProfile if ``top``); print CPU and phases."""
    opts.zones = zones
    prof = cProfile.Profile()
    t = time.perf_counter()
    c = _cpu()
    if top:
        prof.enable()
    report = run_index(opts)
    prof.disable()
    wall, cpu = time.perf_counter() - t, _cpu() - c
    print(
        f"zones {zones}: {report.indexed} tiles, {wall:.1f} s wall, {cpu:.1f} s CPU, "
        f"{1000 * cpu / max(report.indexed, 1):.2f} ms CPU a tile"
    )
    print(json.dumps(report.to_json()["timings"], indent=1))
    print("threads (CPU s by name):", thread_cpu())
    if not top:
        return
    stats = pstats.Stats(prof).sort_stats("tottime")
    stats.print_stats(top)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads (units at once) a worker")
    ap.add_argument("--delay", type=float, default=0.020)
    ap.add_argument("--work", required=True, help="working folder (the world is kept there)")
    ap.add_argument(
        "--profile",
        default=None,
        help="run these zones' units (2,5) in this process alone, no Dask",
    )
    ap.add_argument("--top", type=int, default=40, help="cProfile's top functions (0: none)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="MODULE.NAME=VALUE",
        help="patch a constant of tessera_vz.indexer (in-process runs only)",
    )
    ap.add_argument("--label", default="run", help="name of this measurement in --out")
    ap.add_argument("--out", default=None, help="JSON file to append this measurement to")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ca = make_test_ca(work / "ca")
    os.environ.update({"SSL_CERT_FILE": str(ca.ca_cert), "TESSERA_VZ_CONFIG": str(work / "cfg")})
    for patch in args.set:
        name, value = patch.split("=", 1)
        module, attr = name.rsplit(".", 1)
        target = importlib.import_module(f"tessera_vz.indexer.{module}")
        setattr(target, attr, ast.literal_eval(value))
    world, world_file, dataset_dir = world_in(work, args.cells)
    print(f"world: {len(world):,} tiles in {np.unique(world.zone).size} zones", flush=True)
    out = work / f"index-{args.label}"
    shutil.rmtree(out, ignore_errors=True)
    with WorldServer(world_file, dataset_dir, ca, delay=args.delay) as srv:
        opts = IndexOptions(source=srv.url, out=str(out))
        if args.profile is not None:
            profile_units(opts, [int(z) for z in args.profile.split(",")], args.top)
            return 0
        res = {
            "label": args.label,
            "tiles": len(world),
            **cluster_run(opts, srv, args.workers, args.threads),
        }
    res["repo"] = tree_stats(out)
    print(json.dumps(res, indent=1))
    if args.out:
        path = Path(args.out)
        old = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps([*old, res], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
