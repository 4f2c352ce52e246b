"""Memory of one large (zone, year) unit: peak RSS and CPU of an index run by tile count.

A script a person runs, not a timed test. It generates a sparse tree of
real-size tiles (128 bands, real geometry, headers only) for one zone-year,
then indexes the first ``N`` tiles of it for each ``--tiles N`` in a child
process from local disk, and prints per run: wall and CPU seconds, peak RSS,
batches, time in commit (and collection), and the repository's bytes and
objects per tile. A unit is written in batches (``--batch-tiles``); the peak
must not grow with the number of batches already written.

``--python-path`` indexes with another checkout's ``src`` (the figures
before a change), the tree and the rest staying the same.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from index_throughput import tree_stats, zone_centres

from tessera_vz.testing.tiles import make_tree, write_manifest


def index_child(
    manifest: Path, out: Path, batch_tiles: int, python_path: str | None
) -> dict[str, Any]:
    """Index ``manifest`` into ``out`` in a child process; its report, CPU and peak RSS."""
    env = dict(os.environ)
    if python_path:
        env["PYTHONPATH"] = python_path
    cmd = [sys.executable, "-c",
           "import resource, sys; from tessera_vz.cli import main; rc = main(sys.argv[1:]); "
           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
           "sys.exit(rc)",
           "index", str(manifest.parent), "--manifest", str(manifest), "--out", str(out), "--json",
           "--quiet", "--batch-tiles", str(batch_tiles)]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"index failed ({proc.returncode}): {proc.stderr[-3000:]}")
    peak_kb = int(proc.stderr.strip().splitlines()[-1])
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "peak_rss_mb": peak_kb / 1024,
        "report": json.loads(proc.stdout),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, nargs="+", default=[7000, 20000])
    ap.add_argument("--batch-tiles", type=int, default=1000)
    ap.add_argument("--workdir", default=None, help="kept between runs: the tree is reused")
    ap.add_argument("--python-path", default=None, help="index with this src (figures before)")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=None, help="append each result as a JSON line here")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tvz-unit-"))
    src = work / "tiles"
    most = max(args.tiles)
    if not (src / f"manifest-{most}.parquet").exists():
        specs = make_tree(src, centres=zone_centres(most), years=(2024,), bands=128,
                          sparse=True, manifest=False)  # fmt: skip
        for n in args.tiles:
            write_manifest(src, specs[:n], path=src / f"manifest-{n}.parquet")
    for n in sorted(args.tiles):
        if not (src / f"manifest-{n}.parquet").exists():
            raise SystemExit(f"{src} has no manifest for {n} tiles: use a fresh --workdir")
        out = work / f"index-{n}{args.label and '-' + args.label}"
        shutil.rmtree(out, ignore_errors=True)
        manifest = src / "manifest.parquet"
        shutil.copyfile(src / f"manifest-{n}.parquet", manifest)
        run = index_child(manifest, out, args.batch_tiles, args.python_path)
        report = run.pop("report")
        repo = tree_stats(out / "utm31.icechunk")
        result = {
            "label": args.label,
            "tiles": n,
            "indexed": report["indexed"],
            "batch_tiles": args.batch_tiles,
            **run,
            "tiles_per_cpu_s": report["indexed"] / run["cpu_s"],
            "bytes_per_tile": repo["bytes"] / n,
            "objects_per_tile": repo["objects"] / n,
            "repo": repo,
            "timings": {k: round(v, 2) for k, v in report["timings"].items()},
        }
        print(json.dumps(result), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
