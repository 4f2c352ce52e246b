"""The viewer and the catalog at archive size: recorded cells against reading every table.

Usage::

    .venv/bin/python benchmarks/viewer_scale.py [--zones 6] [--tiles 1000] [--workdir DIR]
    .venv/bin/python benchmarks/viewer_scale.py --index DIR   # an existing index, as it is

Builds a sparse tree of ``--tiles`` tiles in each of ``--zones`` UTM zones
for 2024 (plus a third of them for 2023 in the first three zones, so gaps
have another year to come from), indexes it (the indexer records each
zone-year's cells on its branch ``coverage``), then, each in a new process with a cold
cache:

- ``recorded``: what the viewer does now: ``/api/info`` (zones, years,
  tile counts, bounds, dataset), the year's gaps, the raster coverage (the
  zoom-0 tile, then the 64 tiles of zoom 3) and the footprints of a
  0.5-degree box; tiles tables read, peak memory;
- ``tables``: the same with the records ignored, i.e. every tiles table read
  as ``/api/info`` did before, and the whole-year GeoJSON the page used to
  fetch (its size and encoding time);
- ``catalog``: ``tessera-vz catalog`` of the index: wall time, peak RSS,
  tiles per second; then the same with ``--items geoparquet`` (no Item files).

Figures are extrapolated linearly to a 1.8 M-tile year (tables, GeoJSON,
catalog scale with tiles; the recorded path with zones, 60 for the globe).
Prints a table and writes ``benchmarks/results/viewer_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
WORLD_TILES = 1_800_000
WORLD_ZONES = 60

#: Run in a child process: argv = index, mode ("recorded" or "tables"). Prints JSON.
PROBE = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from tessera_vz.reader import open_store
from tessera_vz.serve.coverage import Coverage, feature_collection
from tessera_vz.serve.raster import Pyramids, tile_png
store = open_store(sys.argv[1])
t1 = time.perf_counter()
cov = Coverage(store)
if sys.argv[2] == "tables":
    cov._records = lambda zone: {}  # an index without records: every table is read
years = cov.years()
counts = {y: cov.count(y) for y in years}
bounds, dataset = cov.bounds(), store.dataset()
t2 = time.perf_counter()
year = max(years)
gaps = cov.gaps(year)
t3 = time.perf_counter()
pyramids = Pyramids(cov)
z0 = len(tile_png(pyramids.get(year), 0, 0, 0))
t4 = time.perf_counter()
z3 = [len(tile_png(pyramids.get(year), 3, x, y)) for x in range(8) for y in range(8)]
t5 = time.perf_counter()
w, s = bounds[0], bounds[1]
box = json.dumps(feature_collection(cov.tiles(year, (w, s, w + 0.5, s + 0.5)), year, None))
t6 = time.perf_counter()
out = {"open_s": t1 - t0, "info_s": t2 - t1, "gaps_s": t3 - t2, "gaps": len(gaps),
       "raster_z0_s": t4 - t3, "raster_z0_bytes": z0, "raster_z3_64_s": t5 - t4,
       "raster_z3_max_bytes": max(z3), "bbox_s": t6 - t5, "bbox_bytes": len(box),
       "tiles": sum(counts.values()), "zones": len(store.zones()), "table_reads": cov.table_reads}
if sys.argv[2] == "tables":
    t7 = time.perf_counter()
    whole = json.dumps(feature_collection(cov.tiles(year), year, None))
    out.update(geojson_s=time.perf_counter() - t7, geojson_bytes=len(whole))
out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def centres(n: int, zone: int, lat0: float = 40.0) -> list[tuple[float, float]]:
    """``n`` cell centres filling one UTM zone row by row from ``lat0`` north."""
    west = (zone - 1) * 6 - 180
    return [(round(west + 0.05 + 0.1 * (i % 60), 2), round(lat0 + 0.05 + 0.1 * (i // 60), 2))
            for i in range(n)]  # fmt: skip


def build(work: Path, zones: int, tiles: int) -> tuple[Path, float]:
    from tessera_vz.indexer.run import IndexOptions, run_index
    from tessera_vz.testing.tiles import make_tree

    src, index = work / "tree", work / "index"
    chosen = list(range(30, 30 + zones))
    for z in chosen:
        make_tree(src, centres=centres(tiles, z), years=(2024,), bands=128, sparse=True,
                  manifest=False)  # fmt: skip
    for z in chosen[:3]:
        make_tree(src, centres=centres(tiles // 3, z), years=(2023,), bands=128, sparse=True,
                  manifest=False)  # fmt: skip
    t0 = time.perf_counter()
    report = run_index(IndexOptions(source=str(src), out=str(index), dataset="1.1/cambridge"))
    if report.failed:
        raise SystemExit(f"index failed: {report.failed[:3]}")
    return index, time.perf_counter() - t0


def probe(index: Path, mode: str, env: dict[str, str], cache: Path) -> dict[str, Any]:
    shutil.rmtree(cache, ignore_errors=True)
    own = {**env, "TESSERA_VZ_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", PROBE, str(index), mode], capture_output=True,
                          text=True, env=own, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def catalog(index: Path, out: Path, env: dict[str, str], items: str = "json") -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as stdout:
        child = subprocess.Popen(
            [sys.executable, "-m", "tessera_vz.cli", "catalog", str(index), "--out", str(out),
             "--json", "--quiet", "--items", items],
            stdout=stdout, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
        child.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        stdout.seek(0)
        text = stdout.read().decode()
    if child.returncode != 0:
        raise SystemExit(f"catalog failed ({child.returncode}): {text[-2000:]}")
    report = json.loads(text)
    return {"wall_s": wall, "timings": report["timings"], "tiles": report["tiles"],
            "peak_mb": usage.ru_maxrss / 1024, "tiles_per_s": report["tiles"] / wall}  # fmt: skip


def extrapolate(r: dict[str, Any]) -> dict[str, Any]:
    rec, tab, cat = r["recorded"], r["tables"], r["catalog"]
    per_tile = WORLD_TILES / rec["tiles"]
    per_zone = WORLD_ZONES / rec["zones"]
    return {
        "info_recorded_s": rec["info_s"] * per_zone,
        "info_tables_s": tab["info_s"] * per_tile,
        "geojson_whole_year_mb": tab["geojson_bytes"] * per_tile / 1e6,
        "catalog_s": cat["wall_s"] * per_tile,
        "catalog_geoparquet_s": r["catalog_geoparquet"]["wall_s"] * per_tile,
    }


def markdown(r: dict[str, Any]) -> str:
    rec, tab, cat, x = r["recorded"], r["tables"], r["catalog"], r["world"]
    gp = r["catalog_geoparquet"]
    return "\n".join([
        f"{rec['tiles']:,} tile-years in {rec['zones']} zones, each figure in a new process "
        "with a cold cache:",
        "",
        "| | cells recorded in the index (now) | every tiles table read (before) |",
        "| --- | ---: | ---: |",
        f"| `/api/info` (counts, bounds, dataset) | {rec['info_s']:.2f} s "
        f"| {tab['info_s']:.2f} s |",
        f"| tiles tables read | {rec['table_reads']} | {tab['table_reads']} |",
        f"| gaps of the year | {rec['gaps_s'] * 1000:.1f} ms | {tab['gaps_s'] * 1000:.1f} ms |",
        f"| coverage at low zoom | zoom-0 PNG {rec['raster_z0_bytes']:,} B in "
        f"{rec['raster_z0_s']:.2f} s | whole-year GeoJSON {tab['geojson_bytes'] / 1e6:.1f} MB "
        f"in {tab['geojson_s']:.2f} s |",
        f"| peak memory | {rec['peak_mb']:.0f} MB | {tab['peak_mb']:.0f} MB |",
        f"| 1.8 M tiles (extrapolated) | `/api/info` ~{x['info_recorded_s']:.1f} s (60 zones) | "
        f"~{x['info_tables_s']:.0f} s, GeoJSON ~{x['geojson_whole_year_mb']:.0f} MB |",
        "",
        f"`tessera-vz catalog`: {cat['tiles']:,} tiles in {cat['wall_s']:.1f} s "
        f"({cat['tiles_per_s']:,.0f} tiles/s), peak {cat['peak_mb']:.0f} MB; "
        f"1.8 M tiles ~{x['catalog_s'] / 60:.0f} min at this rate. "
        f"`--items geoparquet`: {gp['wall_s']:.1f} s ({gp['tiles_per_s']:,.0f} tiles/s; build "
        f"{gp['timings'].get('build', 0):.1f} s, assemble {gp['timings'].get('assemble', 0):.1f} s)"
        f", peak {gp['peak_mb']:.0f} MB; 1.8 M tiles ~{x['catalog_geoparquet_s'] / 60:.1f} min.",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zones", type=int, default=6)
    ap.add_argument("--tiles", type=int, default=1000, help="tiles per zone for 2024")
    ap.add_argument("--index", default=None, help="measure this index instead of building one")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tvz-viewer-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TESSERA_VZ_CACHE": str(work / "cache")}
    os.environ["TESSERA_VZ_CACHE"] = env["TESSERA_VZ_CACHE"]
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    if args.index:
        index = Path(args.index)
    else:
        index, results["index_s"] = build(work, args.zones, args.tiles)
    results["recorded"] = probe(index, "recorded", env, work / "cache-r")
    results["tables"] = probe(index, "tables", env, work / "cache-t")
    results["catalog"] = catalog(index, work / "catalog", env)
    results["catalog_geoparquet"] = catalog(index, work / "catalog-gp", env, "geoparquet")
    results["world"] = extrapolate(results)
    print(markdown(results))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "viewer_scale.json").write_text(json.dumps(results, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
