"""Maps benchmark: classify, similar and change beside the plain region read of the same pixels.

Usage::

    .venv/bin/python benchmarks/maps.py [--size 1000] [--strip-pixels N] [--workdir DIR]

Generates real-size 128-band tiles (two years) around lon 0 / 52.15 N (UTM
zones 30 and 31), serves them with nginx over HTTPS behind a latency proxy
adding 20 ms per round trip (:mod:`tessera_vz.testing.latency`, in its own
process), indexes them through the proxy, and then, each in a new process
(imports included) on a ``--size`` x ``--size`` pixel area centred on lon 0:

- ``region``: ``store.region(bbox, 2024)``, the float32 embeddings in memory;
- ``region 2y``: the same for 2023 and 2024 (what ``change`` reads);
- ``classify``: sample 1,000 labelled points, fit a random forest with its
  5-fold accuracy, predict every pixel (``tessera_vz.maps``, strip by strip);
- ``similar``: the embedding of one place, then the cosine similarity of
  every pixel;
- ``change``: the cosine distance between 2023 and 2024.

For each: wall time and peak RSS of the process. The goal (issue 22): a map
costs at most twice its region read, and under 1.5 GB of memory. Prints a
table and writes ``benchmarks/results/maps.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from links import ProxyProcess
from rich.console import Console
from rich.table import Table

from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import make_tree
from tessera_vz.testing.tls import make_test_ca

HERE = Path(__file__).parent
CENTRE = (0.0, 52.15)
YEARS = (2023, 2024)
TARGET = 1.5 * 2**30
LABELS = 1000

#: One task in a new process; prints its wall time (imports excluded) and peak RSS.
TASK = """
import json, resource, sys, time
import pyarrow.parquet as pq
from tessera_vz.reader import open_store
from tessera_vz.maps import Area, change, fit, predict, reference_embeddings, similar, training_set
task, index, url, strip = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
bbox = tuple(map(float, sys.argv[5:9]))
store = open_store(index, allowed_sources=[url])
t0 = time.perf_counter()
extra = {}
if task == "region":
    store.region(bbox, 2024)
elif task == "region 2y":
    store.region(bbox, [2023, 2024])
elif task == "classify":
    x, labels, _ = training_set(store, pq.read_table(sys.argv[9]), 2024, "label")
    t1 = time.perf_counter()
    model = fit(x, labels, "forest", store.dataset())
    t2 = time.perf_counter()
    predict(store, Area(bbox), 2024, model, strip_pixels=strip)
    extra = {"accuracy": model.report["accuracy"], "samples": model.report["samples"],
             "sample_s": t1 - t0, "fit_cv_s": t2 - t1, "predict_s": time.perf_counter() - t2}
elif task == "similar":
    import pyarrow as pa
    ref = pa.table({"lon": [(bbox[0] + bbox[2]) / 2], "lat": [(bbox[1] + bbox[3]) / 2]})
    similar(store, Area(bbox), 2024, reference_embeddings(store, ref, 2024), strip_pixels=strip)
elif task == "change":
    change(store, Area(bbox), [2023, 2024], strip_pixels=strip)
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"wall_s": wall, "peak_rss_bytes": peak, **extra}))
import os; os._exit(0)
"""


def bbox_of(pixels: int) -> tuple[float, float, float, float]:
    """A bbox of about ``pixels`` x ``pixels`` 10 m pixels centred on :data:`CENTRE`."""
    half_m = pixels * 10 / 2
    dlat = half_m / 111_200
    dlon = half_m / (111_320 * math.cos(math.radians(CENTRE[1])))
    return (CENTRE[0] - dlon, CENTRE[1] - dlat, CENTRE[0] + dlon, CENTRE[1] + dlat)


def cells(bbox: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    """Centres of the 0.1-degree cells the bbox touches, and one more around it."""
    w, s, e, n = bbox
    lons = np.arange(math.floor(w * 10) - 1, math.ceil(e * 10) + 1) / 10 + 0.05
    lats = np.arange(math.floor(s * 10), math.ceil(n * 10)) / 10 + 0.05
    return [(round(float(lo), 2), round(float(la), 2)) for lo in lons for la in lats]


def training_points(index: Path, url: str, bbox: tuple[float, ...], path: Path) -> None:
    """1,000 random points of the area labelled by the sign of band 0 (read once, not timed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tessera_vz.reader import open_store

    rng = np.random.default_rng(7)
    lon = rng.uniform(bbox[0], bbox[2], LABELS)
    lat = rng.uniform(bbox[1], bbox[3], LABELS)
    table = open_store(str(index), allowed_sources=[url]).sample(
        pa.table({"lon": lon, "lat": lat}), 2024
    )
    b0 = table.column("b000").to_numpy(zero_copy_only=False)
    label = np.where(np.isnan(b0), None, np.where(b0 > 0, "pos", "neg"))
    pq.write_table(pa.table({"lon": lon, "lat": lat, "label": label}), path)


def measured(task: str, index: Path, url: str, strip: int, bbox: tuple[float, ...],
             train: Path) -> dict[str, Any]:  # fmt: skip
    t0 = time.perf_counter()
    argv = [task, str(index), url, str(strip), *map(str, bbox), str(train)]
    done = subprocess.run([sys.executable, "-c", TASK, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{task} failed:\n{done.stderr}")
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    return {"task": task, "process_s": round(time.perf_counter() - t0, 2), **doc}


def run_tasks(work: Path, size: int, strip: int, console: Console) -> list[dict[str, Any]]:
    """Generate (once), serve behind the delay proxy, index, and measure every task."""
    src, index = work / "tiles", work / "index"
    bbox = bbox_of(size)
    ca = make_test_ca(work / "ca")
    os.environ["SSL_CERT_FILE"] = str(ca.ca_cert)  # every client, children included
    os.environ["TESSERA_VZ_CACHE"] = str(work / "cache")
    if not (src / "manifest.parquet").exists():
        console.print(f"generating 128-band tiles of {len(cells(bbox))} cells x 2 years in {src}")
        make_tree(src, centres=cells(bbox), years=YEARS, bands=128)
    runs = []
    with NginxServer(src, tls=ca) as server, ProxyProcess(server.url, delay=0.010) as proxy:
        url = proxy.url
        shutil.rmtree(index, ignore_errors=True)  # the proxy's port is new: index through it
        report = run_index(IndexOptions(source=url, out=str(index),
                                        manifest=str(src / "manifest.parquet")))  # fmt: skip
        assert not report.failed, report.failed[:3]
        train = work / "train.parquet"
        training_points(index, url, bbox, train)
        for task in ("region", "classify", "similar", "region 2y", "change"):
            console.print(f"{task} ...")
            runs.append(measured(task, index, url, strip, bbox, train))
    return runs


def summary(runs: list[dict[str, Any]], size: int, console: Console) -> dict[str, Any]:
    """Print the table; the verdicts (memory target, at most twice the read)."""
    base = {r["task"]: r["wall_s"] for r in runs}
    table = Table(title=f"maps of {size} x {size} pixels over HTTPS + 20 ms")
    for col in ("task", "wall s", "x region", "peak MiB", "process s", "of which"):
        table.add_column(col, justify="right")
    for r in runs:
        ref = base["region 2y" if r["task"] in ("change", "region 2y") else "region"]
        r["x_region"] = round(r["wall_s"] / ref, 2)
        parts = ", ".join(f"{k[:-2]} {r[k]:.2f}" for k in ("sample_s", "fit_cv_s", "predict_s")
                          if k in r)  # fmt: skip
        mib = r["peak_rss_bytes"] / 2**20
        table.add_row(r["task"], f"{r['wall_s']:.2f}", f"{r['x_region']:.2f}", f"{mib:.0f}",
                      f"{r['process_s']:.1f}", parts)  # fmt: skip
    console.print(table)
    maps = [r for r in runs if not r["task"].startswith("region")]
    under = all(r["peak_rss_bytes"] < TARGET for r in maps)
    twice = all(r["x_region"] <= 2.0 for r in maps)
    console.print(f"maps under {TARGET / 2**30:.1f} GiB: {under}; at most twice the read: {twice}")
    return {"under_memory_target": under, "at_most_twice_the_read": twice}


def main(argv: list[str] | None = None) -> int:
    from tessera_vz.core.files import atomic_write_bytes
    from tessera_vz.maps.strips import STRIP_PIXELS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=1000, help="area side in pixels (default 1000)")
    p.add_argument("--strip-pixels", type=int, default=STRIP_PIXELS, help="pixels per strip")
    p.add_argument("--workdir", help="keep the tree and index here (default: a temp dir)")
    args = p.parse_args(argv)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="maps-bench-"))
    console = Console()
    try:
        runs = run_tasks(work, args.size, args.strip_pixels, console)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    results = {"machine": platform.platform(), "python": platform.python_version(),
               "size": args.size, "bbox": bbox_of(args.size), "strip_pixels": args.strip_pixels,
               "latency_ms_per_round_trip": 20, "runs": runs, **summary(runs, args.size, console),
               "load_average": os.getloadavg()}  # fmt: skip
    (HERE / "results").mkdir(exist_ok=True)
    atomic_write_bytes(
        HERE / "results" / f"maps-{args.size}.json", json.dumps(results, indent=2).encode()
    )
    console.print(f"wrote benchmarks/results/maps-{args.size}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
