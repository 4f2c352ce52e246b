"""Which (zone, year) units of a run have anything to do, decided before any is run.

A sync of a whole year is ~60 units of ~30,000 tiles, and when 1 % of tiles
changed, or none, most of a unit's cost is deciding that: opening the zone's
repository, reading the year's ``tiles`` table, diffing it with the inventory
(:mod:`.sync`). This module does that once for every unit the inventory
touches, before any unit runs, and cheaply:

* only the four columns a diff needs (tile name, source, the two inventory
  facts) are read, straight from Zarr, not the whole table through xarray;
* the zones' repositories are opened and read concurrently (threads: the
  work is Icechunk and Zarr I/O and Arrow compute, which release the GIL);
* nothing is written: no configuration saved, no lock taken, no scratch
  branch cleaned. A unit whose inventory shows nothing new, changed or
  removed (and whose layout is current) is then not run at all, so an
  unchanged sync opens nothing for writing and commits nothing.

Units that have work are run as before (:func:`~tessera_vz.indexer.unit.index_unit`),
which reads its table again under the zone's lock at the tip it publishes
on, so a concurrent run is never overwritten from this earlier read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import icechunk as ic
import numpy as np
import pyarrow as pa
import zarr
from zarr.errors import GroupNotFoundError

from tessera_vz.core.layout import TILES, branch_name, repo_name
from tessera_vz.core.repos import storage_for
from tessera_vz.indexer.migration import layout_outdated
from tessera_vz.indexer.sync import RECORDED_SCHEMA, UnitDiff, diff_unit, recorded_of
from tessera_vz.indexer.table_sidecar import has_table_blocks

log = logging.getLogger(__name__)

#: Zones whose repositories are read at once (I/O bound; a few MB each).
PLAN_THREADS = 8
#: Table columns a diff reads (``tile`` is the name).
_COLUMNS = ("tile", "source", "emb_listed", "scales_listed")


@dataclass(frozen=True)
class UnitPlan:
    """What a unit's diff found before the unit ran.

    ``run`` is false only when the unit is known to have nothing to do:
    nothing to probe, nothing removed, layout current. ``skipped`` counts
    the tiles the inventory shows unchanged (reported as skipped when the
    unit is not run; a unit that runs counts its own). A unit with no year
    branch yet, or no readable repository, runs with its counts left at 0.
    """

    run: bool
    skipped: int = 0
    probe: int = 0
    removed: int = 0
    #: Whether the tip's table blocks are there (an idle unit without them gets them
    #: written by the run, outside the unit: :func:`.table_sidecar.write_missing_blocks`).
    blocks: bool = True


def recorded_columns(store: Any) -> pa.Table:
    """The index side of a diff, reading only its four columns of the ``tiles`` group."""
    try:
        group = zarr.open_group(store, path=TILES, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError, GroupNotFoundError):
        return RECORDED_SCHEMA.empty_table()
    present = set(group.array_keys())
    if "tile" not in present:
        return RECORDED_SCHEMA.empty_table()
    columns: dict[str, np.ndarray] = {}
    for c in _COLUMNS:
        array = group[c] if c in present else None
        if isinstance(array, zarr.Array):
            columns["name" if c == "tile" else c] = np.asarray(array[...])
    return recorded_of(columns, len(columns["name"]))


def _plan_zone(
    out: str,
    zone: int,
    years: list[int],
    units: Mapping[tuple[int, int], pa.Table],
    source: str,
    s3_options: dict[str, Any] | None,
) -> dict[tuple[int, int], UnitPlan]:
    """Plans of one zone's units (one repository opened read-only).

    Each unit's rows are taken from the inventory only while it is diffed.
    """
    storage = storage_for(out.rstrip("/") + "/" + repo_name(zone), s3_options=s3_options)
    if not ic.Repository.exists(storage):
        return {(zone, year): UnitPlan(True) for year in years}
    repo = ic.Repository.open(storage)
    branches = repo.list_branches()
    plans = {}
    for year in years:
        if branch_name(year) not in branches:
            plans[(zone, year)] = UnitPlan(True)
            continue
        listed = units[(zone, year)]
        tip = repo.lookup_branch(branch_name(year))
        recorded = recorded_columns(repo.readonly_session(snapshot_id=tip).store)
        diff: UnitDiff = diff_unit(listed, recorded, source, reprobe=False)
        probe, removed = diff.probe.num_rows, len(diff.removed)
        work = bool(probe or removed) or layout_outdated(repo, tip)
        blocks = work or has_table_blocks(out, zone, year, str(tip), s3_options)
        plans[(zone, year)] = UnitPlan(work, diff.skipped, probe, removed, blocks)
    return plans


def plan_units(
    out: str,
    units: Mapping[tuple[int, int], pa.Table],
    source: str,
    *,
    s3_options: dict[str, Any] | None = None,
    threads: int = PLAN_THREADS,
) -> dict[tuple[int, int], UnitPlan]:
    """Diff every unit of ``units`` against the index at ``out``, zones concurrently.

    ``source`` is the run's root URL (a tile indexed from another root is
    re-probed). A zone whose repository cannot be read is planned to run,
    so the unit itself reports what is wrong.
    """
    by_zone: dict[int, list[int]] = {}
    for zone, year in sorted(units):
        by_zone.setdefault(zone, []).append(year)

    def plan(zone: int) -> dict[tuple[int, int], UnitPlan]:
        try:
            return _plan_zone(out, zone, by_zone[zone], units, source, s3_options)
        except (ic.IcechunkError, OSError, ValueError) as exc:
            log.warning("zone %d: cannot diff against the index (%s); its units run", zone, exc)
            return {(zone, year): UnitPlan(True) for year in by_zone[zone]}

    plans: dict[tuple[int, int], UnitPlan] = {}
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for part in pool.map(plan, sorted(by_zone)):
            plans.update(part)
    return plans
