"""The reads of ``world.py``, each run in a fresh child process and checked against the formula.

``python benchmarks/world_reads.py TASK JSON`` runs one task and prints one
JSON line: its wall time, its peak RSS measured *before* the check (so the
check's own arrays are not counted), and the number of values that differ
from :func:`~tessera_vz.testing.world.content.expected_values` (must be 0).
A child is a cold reader: its ``TESSERA_VZ_CACHE`` is an empty folder the
parent gives it.

Tasks: ``point`` (one point, a new process: the cold-start case), ``points``
(a GBIF-like CSV through ``tessera-vz points``, streamed in batches),
``region`` (a strip across three UTM zones), ``catalog`` (``tessera-vz
catalog`` of the index, ``--items geoparquet`` or the default ``json``).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tessera_vz.core.layout import parse_tile_name
from tessera_vz.testing.world.cells import World
from tessera_vz.testing.world.content import content_year, expected_values


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes.

    ``VmHWM`` of ``/proc/self/status``: the high-water mark of this process's
    own memory. ``ru_maxrss`` is not: Linux carries it across ``fork`` and
    ``exec``, so a child of a big parent would report the parent's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def expected(world: World, tiles: Any, rows: Any, cols: Any) -> np.ndarray:
    """What the reader must return at ``(tile, row, col)`` of each point, ``(N, 128)``."""
    tiles = np.asarray(tiles, dtype=object)
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    out = np.full((tiles.size, 128), np.nan, dtype=np.float32)
    names, inverse = np.unique(tiles.astype(str), return_inverse=True)
    for k, name in enumerate(names):
        at = np.flatnonzero(inverse == k)
        lon, lat = parse_tile_name(str(name))
        i = int(world.find(np.array([round(lon * 100)]), np.array([round(lat * 100)]))[0])
        if i < 0:
            continue  # a tile the world does not have: every value a mismatch
        year = content_year(world.year, int(world.generation[i]))
        out[at] = expected_values(year, lon, lat, rows[at], cols[at])
    return out


def mismatches(got: np.ndarray, want: np.ndarray) -> int:
    """Rows of ``got`` that differ from ``want`` (NaN equal to NaN)."""
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    return int((~same.all(axis=-1)).sum())


def task_point(a: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    from tessera_vz.reader import open_store

    store = open_store(a["url"], allow_private_sources=True)
    value = store.point(a["lon"], a["lat"], a["year"])
    wall = time.perf_counter() - t0
    peak = peak_rss()
    loc = store.locate(a["lon"], a["lat"], a["year"])  # after the timed read: no request
    want = expected(World.load(a["world"]), [loc.name], [loc.row], [loc.col])
    return {
        "seconds": wall, "peak_rss": peak, "tile": loc.name, "row": int(loc.row),
        "col": int(loc.col), "values": 128, "mismatches": mismatches(value[None], want),
        "nan": bool(np.isnan(value).all()),
    }  # fmt: skip


def task_points(a: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from tessera_vz.cli import main as cli

    argv = ["points", a["csv"], "--store", a["url"], "--year", str(a["year"]), "--out", a["out"],
            "--allow-private", "--quiet"]  # fmt: skip
    t0 = time.perf_counter()
    code = cli(argv)
    wall = time.perf_counter() - t0
    peak = peak_rss()
    table = pq.read_table(a["out"])
    status = table.column("status").to_numpy(zero_copy_only=False)
    ok = status == "ok"
    bands = [f"b{b:03d}" for b in range(128)]
    sub = table.filter(ok)
    got = np.stack([sub.column(b).to_numpy() for b in bands], axis=1).astype(np.float32)
    want = expected(
        World.load(a["world"]), sub.column("tile").to_pylist(),
        sub.column("row").to_numpy(), sub.column("col").to_numpy(),
    )  # fmt: skip
    kinds, counts = np.unique(status, return_counts=True)
    return {
        "seconds": wall, "peak_rss": peak, "exit": code, "points": table.num_rows,
        "status": {str(k): int(c) for k, c in zip(kinds, counts, strict=True)},
        "values": int(ok.sum()) * 128, "mismatches": mismatches(got, want),
    }  # fmt: skip


def task_region(a: dict[str, Any]) -> dict[str, Any]:
    from pyproj import CRS

    from tessera_vz.core.geometry import unproject
    from tessera_vz.reader import open_store

    store = open_store(a["url"], allow_private_sources=True)
    t0 = time.perf_counter()
    ds = store.region(tuple(a["bbox"]), a["year"])
    emb = ds["embeddings"].values
    wall = time.perf_counter() - t0
    peak = peak_rss()
    epsg = int(CRS.from_wkt(ds["spatial_ref"].attrs["crs_wkt"]).to_epsg())
    x, y = np.meshgrid(ds.x.values, ds.y.values)
    lon, lat = unproject(x.ravel(), y.ravel(), epsg)
    loc = store.locate_points(lon, lat, a["year"])
    want = np.full((lon.size, 128), np.nan, np.float32)
    ok = np.asarray(loc.ok)
    want[ok] = expected(World.load(a["world"]), loc.tile[ok], loc.row[ok], loc.col[ok])
    zones = sorted({int(z) for z in np.asarray(loc.zone)[ok]})
    return {
        "seconds": wall, "peak_rss": peak, "shape": list(emb.shape[:2]), "zones": zones,
        "values": int(ok.sum()) * 128, "pixels": int(lon.size), "covered": int(ok.sum()),
        "mismatches": mismatches(emb.reshape(-1, 128), want),
    }  # fmt: skip


def task_catalog(a: dict[str, Any]) -> dict[str, Any]:
    """``tessera-vz catalog`` of the index, ``--items`` as asked (``geoparquet`` by default).

    The peak memory is this process's; a pool of builders (``--jobs``, or
    the bulk mode's own on a long run) reports its biggest child beside it.
    """
    import pyarrow.parquet as pq

    from tessera_vz.cli import main as cli

    items = a.get("items", "geoparquet")
    t0 = time.perf_counter()
    code = cli(["catalog", a["index"], "--out", a["out"], "--quiet", "--allow-private",
                "--items", items])  # fmt: skip
    wall = time.perf_counter() - t0
    rows = pq.read_metadata(f"{a['out']}/tiles.parquet").num_rows
    items_rows = pq.read_metadata(f"{a['out']}/stac/items.parquet").num_rows
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {"seconds": wall, "peak_rss": peak_rss(), "children_peak_rss": children, "exit": code,
            "rows": rows, "items_rows": items_rows, "items": items,
            "tiles_per_s": rows / wall}  # fmt: skip


TASKS = {"point": task_point, "points": task_points, "region": task_region,
         "catalog": task_catalog}  # fmt: skip

if __name__ == "__main__":
    print(json.dumps(TASKS[sys.argv[1]](json.loads(sys.argv[2]))))
