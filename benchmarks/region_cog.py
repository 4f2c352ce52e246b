"""Region GeoTIFF benchmark: time, peak memory and size of ``tessera-vz region --out X.tif``.

Usage::

    .venv/bin/python benchmarks/region_cog.py [--sizes 250,500,1000,2000] [--workdir DIR]

Generates a tree of real-size 128-band tiles across UTM zones 30 and 31 at
52 N (5 x 3 cells, ~1.6 GB of disk), indexes it, then runs the command as a
user does (a new process each time, imports included) for square regions of
``--sizes`` pixels centred on lon 0, so every region takes pixels of both
zones:

- ``cog``: the float32 Cloud-Optimised GeoTIFF (the default);
- ``raw``: ``--raw``, int8 embeddings plus the float32 scales file;
- ``before``: the writer this replaced, for comparison (the float32 region in
  memory written by ``rio.to_raster``: striped, uncompressed; the region read
  and the dequantisation are today's), only up to 1,000 pixels.

For each run: wall time, peak RSS of the process (``ru_maxrss`` of the child),
bytes written, and whether GDAL reports ``LAYOUT=COG``. The target is a
1,000 x 1,000 x 128 region under 1.5 GB of memory. Prints a table and writes
``benchmarks/results/region_cog.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.testing.tiles import make_tree

HERE = Path(__file__).parent
TREE = (-0.25, 52.05, 0.25, 52.25)  # 5 x 3 cells across lon 0
CENTRE = (0.0, 52.15)
TARGET = 1.5 * 2**30

#: Runs a command and prints its peak RSS (bytes): the only child of this process.
MEASURE = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); "
    "sys.exit(done.returncode)"
)
#: The previous writer: the dequantised region in memory, rio.to_raster as it was.
BEFORE = """
import sys, rioxarray
from tessera_vz.reader import open_store
store = open_store(sys.argv[1], allow_local_sources=True)
ds = store.region(tuple(map(float, sys.argv[3:7])), 2024)
da = ds["embeddings"].transpose("band", "y", "x")
da = da.rio.write_crs(ds["spatial_ref"].attrs["crs_wkt"])
da.rio.to_raster(sys.argv[2])
import os; os._exit(0)
"""


def bbox_of(pixels: int) -> tuple[float, float, float, float]:
    """A bbox of about ``pixels`` x ``pixels`` 10 m pixels centred on :data:`CENTRE`."""
    half_m = pixels * 10 / 2
    dlat = half_m / 111_200
    dlon = half_m / (111_320 * math.cos(math.radians(CENTRE[1])))
    return (CENTRE[0] - dlon, CENTRE[1] - dlat, CENTRE[0] + dlon, CENTRE[1] + dlat)


def measured(cmd: list[str]) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return wall, int(done.stdout.split()[-1]), done.stderr


def describe(paths: list[Path]) -> dict[str, Any]:
    import rasterio

    info: dict[str, Any] = {"bytes": sum(p.stat().st_size for p in paths)}
    with rasterio.open(paths[0]) as f:
        info["shape"] = [f.count, f.height, f.width]
        info["layout"] = f.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "")
        info["compression"] = f.compression.name if f.compression else "none"
        info["tiled"] = bool(f.profile.get("tiled"))
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="250,500,1000,2000", help="region sides in pixels")
    p.add_argument("--workdir", help="keep the tree and index here (default: a temp dir)")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="region-cog-"))
    src, index, out = work / "tiles", work / "index", work / "out"
    console = Console()
    if not index.exists():
        console.print(f"generating 128-band tiles in {src} ...")
        make_tree(src, bbox=TREE, years=(2024,), bands=128, manifest=False)
        run_index(IndexOptions(source=str(src), out=str(index)))
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "tessera_vz.cli", "region"]
    runs = []
    for size in sizes:
        bbox = bbox_of(size)
        common = [*map(str, bbox), "--year", "2024", "--store", str(index),
                  "--allow-local-sources"]  # fmt: skip
        for mode in ("cog", "raw", "before"):
            if mode == "before" and size > 1000:
                continue
            target = out / f"{mode}-{size}.tif"
            if mode == "before":
                cmd = [sys.executable, "-c", BEFORE, str(index), str(target), *map(str, bbox)]
            else:
                cmd = [*cli, *common, "--out", str(target), *(["--raw"] if mode == "raw" else [])]
            wall, peak, _ = measured(cmd)
            files = [target] + ([out / f"{mode}-{size}_scales.tif"] if mode == "raw" else [])
            run = {"size": size, "mode": mode, "bbox": bbox, "wall_s": round(wall, 2),
                   "peak_rss_bytes": peak, **describe(files)}  # fmt: skip
            runs.append(run)
            for f in files:
                f.unlink()
    table = Table(title="tessera-vz region -> GeoTIFF (a new process per run)")
    for col in ("pixels", "mode", "h x w", "wall s", "peak MiB", "file MB", "layout"):
        table.add_column(col, justify="right")
    for r in runs:
        table.add_row(
            f"{r['size']}^2", r["mode"], "x".join(map(str, r["shape"][1:])), f"{r['wall_s']:.1f}",
            f"{r['peak_rss_bytes'] / 2**20:.0f}", f"{r['bytes'] / 1e6:.0f}",
            f"{r['layout'] or 'strips'}/{r['compression']}",
        )  # fmt: skip
    console.print(table)
    kilo = [r for r in runs if r["size"] == 1000 and r["mode"] in ("cog", "raw")]
    verdict = all(r["peak_rss_bytes"] < TARGET for r in kilo)
    console.print(f"1,000 x 1,000 x 128 under {TARGET / 2**30:.1f} GiB: {verdict}")
    results = {"machine": platform.platform(), "python": platform.python_version(),
               "runs": runs, "target_bytes": TARGET, "kilo_under_target": verdict}  # fmt: skip
    dest = HERE / "results" / "region_cog.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {dest}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
