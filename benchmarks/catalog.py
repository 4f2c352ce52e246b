"""Catalog benchmark: full build vs unchanged re-run vs one changed zone-year.

Usage::

    .venv/bin/python benchmarks/catalog.py [--tiles 1000] [--workdir DIR]

Generates a sparse full-size tree of ``--tiles`` tiles per (zone, year) for
zones 31 and 32 and years 2024 and 2025 (4 units; real geometry, sizes and
paths, near-zero disk), indexes it, then times ``tessera-vz catalog`` as a
user runs it (a new process each time, imports included):

1. full build into an empty directory (every tiles table read, cold cache);
2. the same command again over the unchanged index;
3. after one tile is added to zone 31, 2025 and that unit re-indexed.

For each run: wall time, the run's own timings, zone-years rebuilt, rows
computed and copied, Item files written, output files replaced, and whether
any file outside the changed unit was touched (mtimes). Prints a table and
writes ``benchmarks/results/catalog.json``.
"""

from __future__ import annotations

import argparse
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

from rich.console import Console
from rich.table import Table

from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.testing.tiles import make_tree

HERE = Path(__file__).parent
ZONES = (31, 32)
YEARS = (2024, 2025)


def centres(n: int, zone: int, lat0: float = 40.0) -> list[tuple[float, float]]:
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


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def _children_cpu() -> float:
    """CPU seconds used by finished child processes (less noisy than wall time when shared)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def catalog_run(index: Path, out: Path, env: dict[str, str]) -> dict[str, Any]:
    """One ``tessera-vz catalog`` in a new process: wall time and its JSON report."""
    before = mtimes(out) if out.exists() else {}
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tessera_vz.cli", "catalog", str(index), "--out", str(out),
         "--json", "--quiet"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0
    if done.returncode != 0:
        raise SystemExit(f"catalog failed ({done.returncode}): {done.stderr}")
    report = json.loads(done.stdout)
    after = mtimes(out)
    touched = sorted(k for k, v in after.items() if before.get(k) != v)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "timings": report["timings"],
        "built": [f"{u['zone']}/{u['year']}" for u in report["units"]["built"]],
        "kept": len(report["units"]["kept"]),
        "rows_built": report["rows_built"],
        "rows_copied": report["rows_copied"],
        "items_written": report["items_written"],
        "written": report["written"],
        "files_touched": len(touched),
        "touched_outside_unit": [
            k for k in touched if k.startswith("stac/utm") and not k.startswith("stac/utm31/2025/")
        ],
        "tiles": report["tiles"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=1000, help="tiles per (zone, year)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tvz-catalog-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "TESSERA_VZ_CACHE": str(work / "cache")}
    os.environ["TESSERA_VZ_CACHE"] = env["TESSERA_VZ_CACHE"]
    src, index, out = work / "tree", work / "index", work / "catalog"
    t0 = time.perf_counter()
    for zone in ZONES:
        make_tree(src, centres=centres(args.tiles, zone), years=YEARS, bands=128, sparse=True,
                  manifest=False)  # fmt: skip
    report = run_index(IndexOptions(source=str(src), out=str(index)))
    prepared = time.perf_counter() - t0
    if report.failed:
        raise SystemExit(f"index failed: {report.failed[:3]}")

    results: dict[str, Any] = {
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "tile_years": report.indexed,
        "units": len(ZONES) * len(YEARS),
        "prepare_s": prepared,
    }
    results["full"] = catalog_run(index, out, env)
    results["unchanged"] = catalog_run(index, out, env)
    make_tree(src, centres=[(2.95, 39.95)], years=(2025,), bands=128, sparse=True,
              manifest=False)  # fmt: skip
    changed = run_index(IndexOptions(source=str(src), out=str(index), years=[2025], zones=[31]))
    assert [(c.zone, c.year) for c in changed.commits] == [(31, 2025)], changed.commits
    results["one_changed"] = catalog_run(index, out, env)
    full = results["full"]["wall_s"]
    run_full = results["full"]["timings"]["total"]
    results["ratios"] = {
        "unchanged_over_full": results["unchanged"]["wall_s"] / full,
        "one_changed_over_full": results["one_changed"]["wall_s"] / full,
        "unchanged_over_full_run": results["unchanged"]["timings"]["total"] / run_full,
        "one_changed_over_full_run": results["one_changed"]["timings"]["total"] / run_full,
        "unchanged_over_full_cpu": results["unchanged"]["cpu_s"] / results["full"]["cpu_s"],
        "one_changed_over_full_cpu": results["one_changed"]["cpu_s"] / results["full"]["cpu_s"],
    }
    results["catalog_bytes"] = {
        name: (out / name).stat().st_size
        for name in ("tiles.parquet", "stac/items.parquet", "coverage.png")
    }

    table = Table(title=f"tessera-vz catalog: {report.indexed} tile-years in {results['units']} "
                        "zone-years (new process per run)")  # fmt: skip
    columns = ("run", "wall s", "cpu s", "in-run s", "in-run ratio", "rebuilt", "rows built",
               "rows copied", "items written", "files touched", "other units touched")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for name in ("full", "unchanged", "one_changed"):
        r = results[name]
        run_s = r["timings"]["total"]
        table.add_row(
            name, f"{r['wall_s']:.2f}", f"{r['cpu_s']:.2f}", f"{run_s:.2f}",
            f"{run_s / run_full:.3f}", ",".join(r["built"]) or "-",
            str(r["rows_built"]), str(r["rows_copied"]), str(r["items_written"]),
            str(r["files_touched"]), str(len(r["touched_outside_unit"])),
        )  # fmt: skip
    Console(width=160).print(table)
    print(
        "wall s / cpu s: the whole command in a new process, imports of icechunk, xarray and "
        "pyarrow included (~1.3 s of CPU); in-run s: the run's own total (report timings)"
    )
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "catalog.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("ratios", "catalog_bytes")}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
