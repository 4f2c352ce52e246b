"""Syncing a year: the manifest with 1 % of tiles changed, and with none.

A script a person runs (``python benchmarks/sync.py``), not a timed test. Two
parts, each in a child process so its peak memory (RSS) is its own:

* **diff at N rows** (``--rows``, default 1.8 M = one global year, plus
  ``--other-rows`` of other years, default 2.9 M, for upstream's 4.7 M-row v1
  manifest): an upstream-style ``manifest.parquet`` (pandas, tz-aware
  timestamps, ``s3://`` URIs, sorted by year) is read, filtered to the
  dataset and the year, validated into the inventory, cut into (zone, year)
  units and diffed (:func:`~tessera_vz.indexer.sync.recorded_of` +
  :func:`~tessera_vz.indexer.sync.diff_unit`) against an index side in which
  one tile in 100 is recorded with other facts, so exactly those are found.
  The index side is built from the manifest (not timed), as the four columns
  :func:`~tessera_vz.indexer.sync_plan.recorded_columns` reads.
* **a real sync** (``--zones`` x ``--per-zone`` sparse real-size tiles served by
  nginx with their upstream manifest, indexed once into ``--workdir`` and
  reused): 1 % of tiles get a new mtime and the manifest is rewritten; the
  sync is timed (phases from the report), its requests counted in nginx's log
  (target: the manifest + two headers per changed tile) and its commits; then
  an unchanged sync (target: one request, no commit).

The extrapolation to 1.8 M tiles in 60 zones: the diff part measured at that
size, plus the real sync's plan and unit work scaled by rows (linear: an
upper bound, as units of 30,000 tiles share their fixed costs). Prints a
table, writes ``benchmarks/results/sync.json`` and its section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from results_section import replace

RESULTS = Path(__file__).parent / "RESULTS.md"
YEAR = 2024
#: One tile in CHANGED is recorded with other facts in the diff part.
CHANGED = 100
MIRROR = "https://mirror.example.org/tessera/v1/"


def upstream_manifest(path: Path, rows: int, other_rows: int, seed: int = 0) -> None:
    """An upstream-style manifest: ``rows`` tiles of YEAR, ``other_rows`` of earlier years.

    Written a year at a time through pandas (as ``s3scan`` does: tz-aware
    microsecond timestamps, ``s3://`` URIs, large strings), sorted by year,
    lon, lat, so each year is a run of row groups as in upstream's file.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    lon_k, lat_k = np.arange(-1800, 1800), np.arange(-560, 720)  # 0.1 degree, 56S-72N
    pick = np.sort(rng.choice(lon_k.size * lat_k.size, size=rows, replace=False))
    lon_i = (lon_k[pick // lat_k.size] * 10 + 5).astype(np.int32)  # sorted by lon, lat
    lat_i = (lat_k[pick % lat_k.size] * 10 + 5).astype(np.int32)

    def text(v: np.ndarray) -> np.ndarray:
        a = np.abs(v)
        whole = np.char.add(np.where(v < 0, "-", ""), (a // 100).astype(str))
        return np.char.add(np.char.add(whole, "."), np.char.zfill((a % 100).astype(str), 2))

    names = np.char.add(np.char.add(np.char.add("grid_", text(lon_i)), "_"), text(lat_i))
    names = names.astype(object)
    base = "s3://tessera/tessera/npy/v1/"
    plan = [(YEAR - 1 - k, min(rows, other_rows - k * rows)) for k in range(-(-other_rows // rows))]
    writer = None
    for year, n in sorted([*plan, (YEAR, rows)]):
        d = base + str(year) + "/" + names[:n]
        mtime = pd.to_datetime(1.70e18 + rng.integers(0, 3e16, n), utc=True).as_unit("us")
        df = pd.DataFrame({
            "version": "1", "variant": "global_0.1_degree_representation", "year": year,
            "lon": lon_i[:n] / 100, "lat": lat_i[:n] / 100, "directory": d,
            "grid_path": d + "/" + names[:n] + ".npy",
            "scales_path": d + "/" + names[:n] + "_scales.npy",
            "grid_mtime": mtime, "scales_mtime": mtime + pd.Timedelta(seconds=3),
            "grid_size": rng.integers(1000, 1120, n) * 1000 * 128 + 128,
            "scales_size": rng.integers(1000, 1120, n) * 1000 * 4 + 128,
            "lon_i": lon_i[:n], "lat_i": lat_i[:n],
        })  # fmt: skip
        table = pa.Table.from_pandas(df, preserve_index=False)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
        del df, table
    assert writer is not None
    writer.close()


def measure_diff(manifest: Path) -> dict[str, Any]:
    """Read, filter, validate, split and diff a manifest as a sync does (child process)."""
    import pyarrow as pa

    from tessera_vz.indexer.datasets import manifest_datasets, row_filter
    from tessera_vz.indexer.inventory import split_units
    from tessera_vz.indexer.manifest import manifest_inventory, open_manifest
    from tessera_vz.indexer.roots import SourceRoot
    from tessera_vz.indexer.sync import diff_unit, recorded_of

    root = SourceRoot(MIRROR)
    t0 = time.perf_counter()
    pf = open_manifest(str(manifest))
    datasets = manifest_datasets(pf)
    rows = row_filter(pf, next(iter(datasets)) if datasets else None)
    t1 = time.perf_counter()
    tiles, failures = manifest_inventory(pf, root, years=[YEAR], rows=rows)
    t2 = time.perf_counter()
    units = split_units(tiles)
    t3 = time.perf_counter()
    build = diff = 0.0
    probe = expected = 0
    for key in units:
        unit = units[key]
        b0 = time.perf_counter()
        emb = np.asarray(unit.column("emb_listed").to_numpy(zero_copy_only=False), dtype=str)
        emb[::CHANGED] = "size=0;mtime_ns=0"
        side = {
            "name": np.asarray(unit.column("name").to_numpy(zero_copy_only=False), dtype=str),
            "source": np.full(unit.num_rows, root.url),
            "emb_listed": emb,
            "scales_listed": np.asarray(
                unit.column("scales_listed").to_numpy(zero_copy_only=False), dtype=str
            ),
        }
        b1 = time.perf_counter()
        d = diff_unit(unit, recorded_of(side, unit.num_rows), root.url, reprobe=False)
        diff += time.perf_counter() - b1
        build += b1 - b0
        probe += d.probe.num_rows
        expected += len(range(0, unit.num_rows, CHANGED))
        del side, d
    pa.default_memory_pool().release_unused()
    return {
        "manifest_rows": pf.metadata.num_rows,
        "year_rows": tiles.num_rows,
        "refused": len(failures),
        "units": len(units),
        "open_and_dataset_s": t1 - t0,
        "inventory_s": t2 - t1,
        "split_s": t3 - t2,
        "diff_s": diff,
        "total_s": (t3 - t0) + diff,
        "index_side_build_s": build,
        "to_probe": probe,
        "to_probe_expected": expected,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def _prepare(work: Path, zones: int, per_zone: int) -> tuple[list[Any], int]:
    """The tree, its manifest and a first index over nginx (reused when ``work`` has them)."""
    from tessera_vz.core.dataset import from_dir_name
    from tessera_vz.core.ports import fresh_port
    from tessera_vz.indexer.run import IndexOptions, run_index
    from tessera_vz.testing.nginx import NginxServer
    from tessera_vz.testing.tiles import make_tree, tile_specs
    from tessera_vz.testing.upstream import write_upstream_manifest

    tree, state = work / "v1", work / "state.json"
    if state.exists():
        doc = json.loads(state.read_text())
        return tile_specs([tuple(c) for c in doc["centres"]], (YEAR,), sparse=True), doc["port"]
    centres = [
        (round(-180 + 6 * (z * 60 // zones) + 0.55 + 0.1 * (k % 50), 2),
         round(5.05 + 0.1 * (k // 50), 2))
        for z in range(zones) for k in range(per_zone)
    ]  # fmt: skip
    specs = make_tree(tree, centres=centres, years=(YEAR,), sparse=True, manifest=False)
    dataset = from_dir_name("v1")
    assert dataset is not None
    write_upstream_manifest(tree, specs, dataset)
    port = fresh_port()
    with NginxServer(tree, port=port) as server:
        t = time.perf_counter()
        opts = IndexOptions(source=server.url, out=str(work / "index"),
                            manifest=server.url + "manifest.parquet")  # fmt: skip
        report = run_index(opts)
        first = {"tiles": report.indexed, "seconds": time.perf_counter() - t}
    state.write_text(json.dumps({"centres": centres, "port": port, "first_index": first}))
    return specs, port


def measure_sync(work: Path, fraction: float, seed: int, workers: int | None) -> dict[str, Any]:
    """Change ``fraction`` of the tiles (new mtime), rewrite the manifest, sync (child process)."""
    from tessera_vz.core.dataset import from_dir_name
    from tessera_vz.indexer.run import IndexOptions, run_index
    from tessera_vz.testing.nginx import NginxServer
    from tessera_vz.testing.upstream import write_upstream_manifest

    specs, port = _prepare(work, 0, 0)
    tree = work / "v1"
    pick = np.random.default_rng(seed).choice(len(specs), int(len(specs) * fraction), False)
    now = time.time()
    for i in pick:
        for rel in (specs[i].emb_path, specs[i].scales_path):
            os.utime(tree / rel, (now, now))
    if pick.size:
        dataset = from_dir_name("v1")
        assert dataset is not None
        write_upstream_manifest(tree, specs, dataset)
    with NginxServer(tree, port=port) as server:
        opts = IndexOptions(source=server.url, out=str(work / "index"), workers=workers,
                            manifest=server.url + "manifest.parquet")  # fmt: skip
        t = time.perf_counter()
        report = run_index(opts)
        seconds = time.perf_counter() - t
        time.sleep(0.3)
        uris = [r["uri"] for r in server.requests()]
    return {
        "tiles": len(specs),
        "changed": int(pick.size),
        "seconds": seconds,
        "indexed": report.indexed,
        "skipped": report.skipped,
        "failed": len(report.failed),
        "commits": len(report.commits),
        "requests": len(uris),
        "manifest_requests": uris.count("/manifest.parquet"),
        "timings": {k: round(v, 3) for k, v in report.timings.items()},
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def table_costs(rows: int) -> dict[str, float]:
    """Seconds of a unit's table work at ``rows`` tiles (child process).

    ``plan``: the four columns a sync plan reads; ``unit``: what a unit with
    changes does with its whole table (read it, rows of it, write it, commit).
    """
    import tempfile

    import icechunk as ic

    from tessera_vz.core.table import COLUMNS, read_table
    from tessera_vz.indexer.references import write_table
    from tessera_vz.indexer.sync_plan import recorded_columns
    from tessera_vz.indexer.unit import _rows_of

    with tempfile.TemporaryDirectory() as tmp:
        repo = ic.Repository.create(ic.local_filesystem_storage(tmp))
        row = {c: (0 if k != "U" else "size=158419840;mtime_ns=1765071382521975000")
               for c, k in COLUMNS.items()}  # fmt: skip
        table = {f"grid_{i / 100:.2f}_5.05": dict(row) for i in range(rows)}
        session = repo.writable_session("main")
        write_table(session.store, table, {})
        snap = session.commit("table")
        t0 = time.perf_counter()
        recorded_columns(repo.readonly_session(snapshot_id=snap).store)
        t1 = time.perf_counter()
        old = read_table(repo.readonly_session(snapshot_id=snap).store)
        session = repo.writable_session("main")
        write_table(session.store, _rows_of(old), {})
        session.commit("again")
        t2 = time.perf_counter()
    return {"plan": t1 - t0, "unit": t2 - t1}


def _child(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def extrapolate(
    diff: dict[str, Any],
    sync: dict[str, Any],
    zones: int,
    small: dict[str, float],
    big: dict[str, float],
) -> dict[str, float]:
    """Seconds of a 1 % sync of 1.8 M tiles in 60 zones (30,000 tiles a unit).

    The manifest and diff part is measured at that size (scaled by the year's
    rows if run smaller). The plan and the units are modelled from the real
    sync: per unit, its measured fixed cost plus the growth of the table work
    from this run's unit size to 30,000 (``small``, ``big``: :func:`table_costs`);
    per changed tile, this run's probe + validation + metadata + reference cost.
    """
    t = sync["timings"]
    per_tile = sum(t.get(k, 0.0) for k in ("probe", "validate", "write_metadata", "write_refs"))
    per_tile /= max(sync["changed"], 1)
    units = t["total"] - sum(t.get(k, 0.0) for k in ("inventory", "plan", "describe"))
    fixed = (units - per_tile * sync["changed"]) / zones
    out = {
        "diff_s": diff["total_s"] * 1_800_000 / max(diff["year_rows"], 1),
        "plan_s": (t.get("plan", 0.0) / zones + big["plan"] - small["plan"]) * 60,
        "units_fixed_s": (fixed + big["unit"] - small["unit"]) * 60,
        "tiles_s": per_tile * 18_000,
        "describe_s": t.get("describe", 0.0) * 60 / zones,
    }
    out["total_s"] = sum(out.values())
    return out


#: Figures before issue 23's sync work (main at 9dd2a43, same manifest and index, load ~8-10).
BEFORE = [
    "Before (main at 9dd2a43, the same 4.7 M-row manifest and 30,000-tile index, load ~8-10): "
    "manifest + year + diff 40.6 s at 1.24 GiB (validation of every row of every year 33.4 s, "
    "a regular expression over both paths of each row most of it; an Arrow hash join per unit "
    "and the whole table through xarray 5.3 s); real sync, 1 % changed 15.9 s; unchanged "
    "2.2 s, already one request.",
]
#: What the figures show (causes), kept with the script that measures them.
NOTES = [
    "",
    "Causes and notes:",
    "",
    "- The manifest: only the year's row groups are read (row-group statistics; upstream "
    "sorts by year), other years' rows are dropped before any check, paths are matched "
    "against the manifest's one base URL by string equality (the regular expression only "
    "for rows under another base), the datasets come from row-group statistics.",
    "- The diff: every unit the manifest touches is diffed before any runs "
    "(`indexer/sync_plan.py`), reading four table columns straight from Zarr, zones on 8 "
    "threads, read-only; one hash lookup per unit instead of a join. Units with nothing "
    "to do are not opened for writing: the unchanged sync makes one request and no commit.",
    "- A local SOURCE also pays `symlinks.skip_outside_links`, not measured here (nginx): "
    "a `Path.resolve` of every file took 6.5 s for 30,000 tiles (~6.5 min for 1.8 M); three "
    "`lstat` calls a tile, resolving only tiles with a link on the way, 1.9 s (~2 min).",
]


def section(res: dict[str, Any]) -> str:
    """The markdown of this script's RESULTS.md section."""
    d, c, n, x = res["diff"], res["sync_changed"], res["sync_none"], res["extrapolated"]
    gib = 2**30
    lines = [
        "## Syncing a year: 1 % changed, and nothing changed (benchmarks/sync.py)",
        "",
        f"Machine: {res['machine']}, shared (load ~{res['load']:.0f}). Figures are this run's.",
        "",
        "| measure | value | target / note |",
        "|---|---|---|",
        f"| manifest read + dataset filter + year filter + validation | "
        f"{d['open_and_dataset_s'] + d['inventory_s']:.1f} s | {d['manifest_rows']:,} rows, "
        f"{d['year_rows']:,} of year {YEAR} kept |",
        f"| split into units + diff every unit | {d['split_s'] + d['diff_s']:.1f} s | "
        f"{d['units']} units; {d['to_probe']:,} to probe (expected {d['to_probe_expected']:,}) |",
        f"| diff total / peak RSS | {d['total_s']:.1f} s / {d['peak_rss_bytes'] / gib:.2f} GiB | "
        "< 2 GB |",
        f"| real sync, 1 % changed | {c['seconds']:.1f} s | {c['tiles']:,} tiles in "
        f"{res['zones']} zones: {c['indexed']} re-indexed of {c['changed']} changed, "
        f"{c['commits']} commits, {c['requests']:,} requests (expected "
        f"{1 + 2 * c['changed']:,}) |",
        f"| its phases | {_phases(c['timings'])} | |",
        f"| real sync, nothing changed | {n['seconds']:.1f} s | {n['requests']} request(s) "
        f"({n['manifest_requests']} manifest), {n['commits']} commits; target 1 and 0 |",
        f"| extrapolated 1 % sync of 1.8 M tiles | {x['total_s']:.0f} s | < 120 s: "
        f"{'met' if x['total_s'] < 120 else 'MISSED'} (manifest + diff {x['diff_s']:.0f} s, "
        f"plan {x['plan_s']:.0f} s, 60 units' fixed work {x['units_fixed_s']:.0f} s, 18,000 "
        f"tiles re-indexed {x['tiles_s']:.0f} s) |",
        "",
        *BEFORE,
        *NOTES,
        f"- Units with changes cost ~{x['units_fixed_s'] / 60:.1f} s each at 30,000 tiles "
        "whatever the change (the whole table read, turned into rows, rewritten through "
        "xarray and committed; scratch branch, publish, tag): 60 units are "
        f"{x['units_fixed_s']:.0f} s of the extrapolation, the 18,000 changed tiles' probes, "
        f"array documents and references {x['tiles_s']:.0f} s. It is a model (the plan and "
        "units measured at this run's size, the table work's growth to 30,000 rows measured "
        "apart), not a 1.8 M-tile sync, and it moves with the load: the same run at load ~8 "
        "extrapolated to 146 s. Dask with 2 workers on these 2 cores was slower (16.1 s vs "
        "10.7 s for the 30,000-tile sync). A clear margin needs a cheaper per-unit write "
        "(table rows patched instead of rewritten, fewer branch operations) or more cores: "
        "units are independent.",
    ]
    return "\n".join(lines)


def _phases(t: dict[str, float]) -> str:
    keys = ("inventory", "plan", "diff", "probe", "write_metadata", "write_refs",
            "write_table", "commit")  # fmt: skip
    return ", ".join(f"{k} {t[k]:.1f}" for k in keys if k in t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_800_000, help="manifest rows of the year")
    ap.add_argument("--other-rows", type=int, default=2_900_000, help="rows of other years")
    ap.add_argument("--zones", type=int, default=12, help="zones of the real index")
    ap.add_argument("--per-zone", type=int, default=500, help="tiles per zone of the real index")
    ap.add_argument("--workers", type=int, help="Dask workers for the syncs (default: none)")
    ap.add_argument("--workdir", default="/tmp/tessera-bench-sync", help="kept between runs")
    ap.add_argument("--no-results", action="store_true", help="do not rewrite RESULTS.md")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sync.json"))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "diff":
            out = measure_diff(Path(rest[0]))
        elif kind == "table":
            out = table_costs(int(rest[0]))
        else:
            workers = int(rest[2]) if rest[2] != "-" else None
            out = measure_sync(Path(args.workdir), float(rest[0]), int(rest[1]), workers)
        print(json.dumps(out))
        return 0

    work = Path(args.workdir) / f"{args.zones}x{args.per_zone}"
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus",
                           "load": os.getloadavg()[0], "zones": args.zones}  # fmt: skip
    manifest = Path(args.workdir) / f"manifest-{args.rows}-{args.other_rows}.parquet"
    if not manifest.exists():
        upstream_manifest(manifest, args.rows, args.other_rows)
    res["diff"] = _child("diff", str(manifest))
    t = time.perf_counter()
    _prepare(work, args.zones, args.per_zone)
    res["prepare_s"] = time.perf_counter() - t
    w = str(args.workers) if args.workers else "-"
    sub = ["--workdir", str(work)]
    res["sync_changed"] = _child("sync", "0.01", str(int(time.time())), w, *sub)
    res["sync_none"] = _child("sync", "0", "0", w, *sub)
    res["table_small"] = _child("table", str(args.per_zone))
    res["table_30k"] = _child("table", "30000")
    res["extrapolated"] = extrapolate(
        res["diff"], res["sync_changed"], args.zones, res["table_small"], res["table_30k"]
    )
    print(json.dumps(res, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    if not args.no_results:
        RESULTS.write_text(replace(RESULTS.read_text(), section(res), "sync.py"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
