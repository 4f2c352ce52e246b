"""Sync by set difference: diffing a whole-archive manifest against the index.

A script a person runs (``python benchmarks/sync.py``), not a timed test. It
measures, in one run on this machine:

* the diff of a synthetic whole-archive ``manifest.parquet`` (default
  3.8 million rows, 9 years of ~420,000 tiles, the upstream columns) against
  an index holding the same tiles: reading the manifest, validating it into
  the inventory (:func:`~tessera_vz.indexer.manifest.manifest_inventory`,
  which reads the needed columns batch by batch),
  cutting it into (zone, year) units, and per unit
  :func:`~tessera_vz.indexer.sync.recorded_table` +
  :func:`~tessera_vz.indexer.sync.diff_unit`, exactly as ``index_unit`` calls
  them. The index side of each unit is a tiles table built with the reader's
  own ``table_dataset`` (as ``read_table`` returns it) from the recorded facts,
  one unit at a time like the run, rather than 3.8 M tiles indexed for real;
  building it is timed apart. One tile in 1,000 is recorded with other facts,
  so the diff must find exactly those. Runs in a child process, so its peak
  memory (RSS) is the diff's alone. Targets: < 60 s and < 2 GB.
* the requests an unchanged re-run makes over nginx with the manifest served
  by the same nginx (target: 1, the manifest), beside the first run's.

Prints a table and writes ``benchmarks/results/sync.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from tessera_vz.core.layout import source_paths
from tessera_vz.core.table import COLUMNS, table_dataset
from tessera_vz.indexer import inventory
from tessera_vz.indexer.manifest import manifest_inventory, open_manifest
from tessera_vz.indexer.roots import SourceRoot
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.indexer.sync import diff_unit, recorded_table
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tiles import MANIFEST_SCHEMA, make_tree

console = Console()
ROOT = SourceRoot("https://mirror.example.org/tessera/v1/global_0.1_degree_representation/")
YEARS = tuple(range(2017, 2026))
#: One tile in CHANGED is recorded in the index with other facts.
CHANGED = 1000


def write_manifest(path: Path, rows: int, seed: int = 0) -> int:
    """A synthetic upstream manifest of about ``rows`` rows (same cells every year)."""
    rng = np.random.default_rng(seed)
    per_year = rows // len(YEARS)
    # Land-ish cells: lon -180..180, lat -56..72 (0.1 degree), a random subset.
    lon_k = np.arange(-1800, 1800)
    lat_k = np.arange(-560, 720)
    pick = rng.choice(lon_k.size * lat_k.size, size=per_year, replace=False)
    lon_i = lon_k[pick % lon_k.size] * 10 + 5
    lat_i = lat_k[pick // lon_k.size] * 10 + 5
    names = [f"grid_{lo / 100:.2f}_{la / 100:.2f}" for lo, la in zip(lon_i, lat_i, strict=True)]
    writer = pq.ParquetWriter(path, MANIFEST_SCHEMA)
    base = 1.7e9
    for year in YEARS:
        n = per_year
        name = pa.array(names)
        directory = pc.binary_join_element_wise(str(year), name, "/")
        grid = pc.binary_join_element_wise(directory, "/", name, ".npy", "")
        scales = pc.binary_join_element_wise(directory, "/", name, "_scales.npy", "")
        h = rng.integers(1000, 1120, n)
        w = rng.integers(600, 1120, n)
        cols = {
            "version": pa.array(["v1"] * n),
            "variant": pa.array(["global_0.1_degree_representation"] * n),
            "year": pa.array(np.full(n, year, np.int32)),
            "lon": pa.array(lon_i / 100),
            "lat": pa.array(lat_i / 100),
            "directory": directory,
            "grid_path": grid,
            "scales_path": scales,
            "grid_mtime": pa.array(base + rng.random(n) * 3e7),
            "scales_mtime": pa.array(base + rng.random(n) * 3e7),
            "grid_size": pa.array(h * w * 128 + 128),
            "scales_size": pa.array(h * w * 4 + 128),
            "lon_i": pa.array(lon_i.astype(np.int32)),
            "lat_i": pa.array(lat_i.astype(np.int32)),
        }
        writer.write_table(pa.table(cols, schema=MANIFEST_SCHEMA))
    writer.close()
    return per_year * len(YEARS)


def index_side(unit: pa.Table) -> Any:
    """The unit's tiles table as ``read_table`` returns it, with the recorded facts.

    Every CHANGED-th tile is recorded with an older mtime, as if re-uploaded
    since; the rest with exactly what the manifest says.
    """
    n = unit.num_rows
    names = unit.column("name").to_pylist()
    emb = np.asarray(unit.column("emb_listed").to_pylist(), dtype=str)
    emb[::CHANGED] = "size=0;mtime=0"
    paths = [source_paths(int(unit.column("year")[0].as_py()), nm) for nm in names]
    columns: dict[str, Any] = {
        c: np.zeros(n, dtype=d if d != "U" else "U1") for c, d in COLUMNS.items()
    }
    columns.update(
        {
            "lon": unit.column("lon").to_numpy(),
            "lat": unit.column("lat").to_numpy(),
            "emb_path": [p[0] for p in paths],
            "scales_path": [p[1] for p in paths],
            "emb_checksum": np.full(n, "2024-01-01T00:00:00Z"),
            "scales_checksum": np.full(n, "2024-01-01T00:00:00Z"),
            "source": np.full(n, ROOT.url),
            "emb_listed": emb,
            "scales_listed": np.asarray(unit.column("scales_listed").to_pylist(), dtype=str),
        }
    )
    return table_dataset(names, columns, {})


def measure(manifest: Path) -> dict[str, Any]:
    """The diff, as an index run does it (run in a child process)."""
    t0 = time.perf_counter()
    pf = open_manifest(str(manifest))
    rows = pf.metadata.num_rows
    t1 = time.perf_counter()
    tiles, failures = manifest_inventory(pf, ROOT)  # reads it batch by batch
    del pf
    t2 = time.perf_counter()
    units = inventory.split_units(tiles)
    del tiles
    t3 = time.perf_counter()
    build = diff = 0.0
    probe = skipped = expected = 0
    for unit in units.values():
        b0 = time.perf_counter()
        old = index_side(unit)
        b1 = time.perf_counter()
        d = diff_unit(unit, recorded_table(old), ROOT.url, reprobe=False)
        b2 = time.perf_counter()
        build += b1 - b0
        diff += b2 - b1
        probe += d.probe.num_rows
        skipped += d.skipped
        expected += len(range(0, unit.num_rows, CHANGED))
        del old, d
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    total = (t3 - t0) + diff
    return {
        "rows": rows,
        "refused": len(failures),
        "units": len(units),
        "read_manifest_s": t1 - t0,
        "validate_s": t2 - t1,
        "split_units_s": t3 - t2,
        "diff_units_s": diff,
        "diff_total_s": total,
        "build_index_side_s": build,
        "to_probe": probe,
        "to_probe_expected": expected,
        "skipped": skipped,
        "peak_rss_bytes": peak,
    }


def requests_of_a_rerun(tiles: int) -> dict[str, Any]:
    """Requests of a first and an unchanged second run, manifest served by nginx."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tree"
        side = int(np.ceil(np.sqrt(tiles)))
        bbox = (0.05, 48.05, 0.05 + 0.1 * (side - 1), 48.05 + 0.1 * (side - 1))
        specs = make_tree(root, bbox=bbox, bands=128, sparse=True)
        with NginxServer(root) as server:
            opts = IndexOptions(
                source=server.url, out=str(Path(tmp) / "index"),
                manifest=server.url + "manifest.parquet",
            )  # fmt: skip
            first = run_index(opts).to_json()
            n_first = len(server.requests(min_count=1))
            server.clear_log()
            second = run_index(opts).to_json()
            time.sleep(0.3)
            reqs = server.requests()
    return {
        "tiles": len(specs),
        "first_run_requests": n_first,
        "first_run_indexed": first["indexed"],
        "rerun_requests": len(reqs),
        "rerun_uris": sorted({r["uri"] for r in reqs}),
        "rerun_skipped": second["skipped"],
        "rerun_commits": len(second["commits"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=3_800_000, help="manifest rows (about)")
    ap.add_argument("--tiles", type=int, default=400, help="tiles of the nginx re-run")
    ap.add_argument("--manifest", help="reuse this synthetic manifest instead of writing one")
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "sync.json"), help="JSON output"
    )
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # child process: diff this manifest
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(Path(args.measure))))
        return 0

    results: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus"}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(args.manifest) if args.manifest else Path(tmp) / "manifest.parquet"
        if not args.manifest:
            t = time.perf_counter()
            write_manifest(manifest, args.rows)
            results["generate_s"] = time.perf_counter() - t
        results["manifest_bytes"] = manifest.stat().st_size
        proc = subprocess.run(
            [sys.executable, __file__, "--measure", str(manifest)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results["diff"] = json.loads(proc.stdout)
    results["rerun"] = requests_of_a_rerun(args.tiles)

    d, r = results["diff"], results["rerun"]
    ok_time = d["diff_total_s"] < 60
    ok_mem = d["peak_rss_bytes"] < 2 << 30
    one = r["rerun_uris"] == ["/manifest.parquet"] and r["rerun_requests"] == 1
    tab = Table(title=f"sync by set difference ({results['machine']})")
    tab.add_column("measure")
    tab.add_column("value", justify="right")
    tab.add_column("target / note")
    tab.add_row("manifest rows", f"{d['rows']:,}", f"{d['units']} (zone, year) units")
    tab.add_row("open manifest", f"{d['read_manifest_s']:.1f} s", "footer only")
    tab.add_row(
        "read + validate -> inventory",
        f"{d['validate_s']:.1f} s",
        f"9 of 14 columns, in batches; {d['refused']} refused",
    )
    tab.add_row("split into units", f"{d['split_units_s']:.1f} s", "")
    tab.add_row("diff every unit", f"{d['diff_units_s']:.1f} s", "recorded_table + diff_unit")
    tab.add_row(
        "diff total", f"{d['diff_total_s']:.1f} s", f"< 60 s: {'met' if ok_time else 'MISSED'}"
    )
    tab.add_row(
        "peak memory (RSS)",
        f"{d['peak_rss_bytes'] / 2**30:.2f} GiB",
        f"< 2 GB: {'met' if ok_mem else 'MISSED'}",
    )
    tab.add_row(
        "tiles to probe", f"{d['to_probe']:,}", f"expected {d['to_probe_expected']:,} (1 in 1,000)"
    )
    tab.add_row("(building the index side)", f"{d['build_index_side_s']:.1f} s", "not in the diff")
    tab.add_row(
        "nginx: first run requests",
        f"{r['first_run_requests']:,}",
        f"{r['tiles']} tiles + manifest",
    )
    tab.add_row(
        "nginx: unchanged re-run requests",
        f"{r['rerun_requests']}",
        f"target 1 (the manifest): {'met' if one else 'MISSED'}",
    )
    console.print(tab)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
