"""Building the units of a catalog run, one after another or on a pool of processes.

A unit (one zone-year) is read (its tiles table), computed (rows, Items)
and written (its Item files or none, its staged Parquet parts) on its own,
so units can be built in parallel. With ``--items geoparquet`` a unit is
all Arrow and numpy work, bound by one core, and a global year has 60+
units: a pool of :func:`workers` processes builds them side by side, each
process opening the index once (:func:`~tessera_vz.reader.store.reopen`).
Processes are spawned, not forked: the parent holds Icechunk's runtime
threads, which a fork would copy in an unknown state.

Whatever fails in one unit is returned as that unit's exception and the
others go on (the caller reports it and keeps the unit's previous rows).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tessera_vz.catalog import tables
from tessera_vz.catalog.assemble import part_path, write_part
from tessera_vz.catalog.bulk import write_unit_parquet
from tessera_vz.catalog.incremental import UnitState
from tessera_vz.catalog.items import write_unit_items
from tessera_vz.catalog.tables import UnitVersion
from tessera_vz.core.options import ReadOptions
from tessera_vz.core.table import refused_rows
from tessera_vz.core.text import printable

log = logging.getLogger(__name__)

#: Below this many units a pool costs more than it saves: each process
#: imports the stack and reads the index's metadata (~2.5 s of CPU), and on
#: 2 busy cores 9 units of ~3,000 tiles took 9.2-16.4 s on 2 processes
#: against 5.7-8.5 s in one. A global year has 60+ units of ~30,000.
MIN_UNITS_FOR_POOL = 16
#: Without ``--jobs``, a pool takes over only when the units left would take
#: longer than this in one process. Built in bulk, a unit costs ~25 us a tile
#: plus its table read: 200,000 tiles in 60 units took 6.8 s of build in one
#: process against 11.0 s on 2 spawned ones (2 shared cores); at 1.8 M tiles
#: the serial build is ~10 times longer, and a pool pays.
POOL_AFTER_S = 20.0


@dataclass
class UnitDone:
    """A built unit: its state, and what the run's report counts of it."""

    state: UnitState
    items_written: int
    items_deleted: int
    rows: int
    #: Tiles refused for their records (``{"zone", "year", "tile", "reason"}``).
    failed: list[dict[str, Any]] = field(default_factory=list)


def workers(items: str, units: int, jobs: int | None = None) -> int:
    """Processes to build ``units`` with: ``jobs`` if given, else the cores in bulk mode.

    The default mode stays in one process: its time is per-Item file
    writing, and its memory is bounded per unit, not per pool.
    """
    if jobs is not None:
        return max(1, min(jobs, units))
    if items != "geoparquet" or units < MIN_UNITS_FOR_POOL:
        return 1
    return max(1, min(os.cpu_count() or 1, units))


def _without_refused(table: Any, u: UnitVersion, failed: list[dict[str, Any]]) -> Any:
    """The table less the tiles whose records the index must not be trusted with.

    A tile name becomes a file name (``stac/utmZZ/YEAR/{tile}.json``): a
    crafted name (``../x``, an absolute path, escape sequences) or any other
    refused value fails that tile with its reason, and the rest go on.
    """
    refused = refused_rows(table)
    for name, reason in refused.items():
        failed.append({"zone": u.zone, "year": u.year, "tile": printable(name),
                       "reason": reason})  # fmt: skip
    if not refused:
        return table
    log.warning("zone %d year %d: %d tiles refused", u.zone, u.year, len(refused))
    return table.drop_sel(tile=list(refused))


def build_unit(
    store: Any, u: UnitVersion, collection_id: str, stac_dir: Path, work: Path, items: str
) -> UnitDone:
    """Rows, Items and Item files of one unit; its Parquet parts staged in ``work``."""
    table = store.tiles(u.year, u.zone)
    # The table was read at the branch's snapshot of that moment: if the
    # branch moved since it was listed, the rows would not be those of
    # ``u.snapshot``. Refuse rather than record a snapshot the rows are not from.
    now = str(store.repo(u.zone).lookup_branch(u.branch))
    if now != u.snapshot:
        raise RuntimeError(
            f"branch {u.branch} of zone {u.zone} moved during the run ({u.snapshot} -> {now}); "
            "run the catalog again"
        )
    failed: list[dict[str, Any]] = []
    table = _without_refused(table, u, failed)
    rows = tables.unit_rows(table, u)
    write = write_unit_parquet if items == "geoparquet" else write_unit_items
    written, deleted = write(
        stac_dir, u, rows, part_path(work, "items", u.zone, u.year), collection_id
    )
    write_part(rows.table, part_path(work, "tiles", u.zone, u.year))
    n = rows.table.num_rows
    state = UnitState(
        zone=u.zone, year=u.year, snapshot=u.snapshot, tag=u.tag, tiles=n, bbox=rows.bbox,
        geometry_types=rows.geometry_types,
        epsg=sorted({int(c) for c in rows.table["epsg"].to_pylist()}),
    )  # fmt: skip
    return UnitDone(state, written, deleted, n, failed)


def _long(spent: float, done: int, left: int) -> bool:
    """Whether ``left`` units would take over :data:`POOL_AFTER_S` at ``spent`` s for ``done``."""
    return spent / done * left > POOL_AFTER_S


def _in_worker(
    root: str, options: ReadOptions, u: UnitVersion, collection_id: str, stac_dir: Path,
    work: Path, items: str,
) -> UnitDone:  # fmt: skip
    from tessera_vz.reader.store import reopen

    return build_unit(reopen(root, options), u, collection_id, stac_dir, work, items)


def build_units(
    store: Any,
    units: list[UnitVersion],
    collection_id: str,
    stac_dir: Path,
    work: Path,
    items: str,
    jobs: int,
    *,
    adaptive: bool = False,
    on_pool: Callable[[int], None] = lambda _n: None,
) -> Iterator[tuple[UnitVersion, UnitDone | Exception]]:
    """Each unit with what building it gave (or the exception it raised), as they finish.

    With ``adaptive`` (no ``--jobs`` given), units are built here one after
    another, and a pool of ``jobs`` processes takes over the rest only once
    the time measured so far says the rest would take over
    :data:`POOL_AFTER_S` in this process; ``on_pool`` is told the processes
    when a pool starts.
    """
    rest = list(units)
    if jobs <= 1 or adaptive:
        t0 = 0.0
        while rest:
            u = rest.pop(0)
            try:
                yield u, build_unit(store, u, collection_id, stac_dir, work, items)
            except Exception as exc:  # reported by the caller; the other units go on
                yield u, exc
            # Timed from the second unit on: the first pays the process's one-time
            # costs (imports, the Items' schema), which the units left will not.
            done = len(units) - len(rest) - 1
            if done == 0:
                t0 = time.perf_counter()
            elif jobs > 1 and len(rest) > 1 and _long(time.perf_counter() - t0, done, len(rest)):
                break
        if not rest:
            return
    jobs = max(1, min(jobs, len(rest)))
    on_pool(jobs)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
        futures = {
            pool.submit(_in_worker, store.root, store.options, u, collection_id, stac_dir,
                        work, items): u
            for u in rest
        }  # fmt: skip
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except Exception as exc:  # reported by the caller; the other units go on
                yield futures[future], exc
