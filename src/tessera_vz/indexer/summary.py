"""Record which cells each year of a zone covers, for readers of the whole archive.

The viewer's counts, coverage raster and gaps need, per (zone, year), only
which 0.1-degree cells hold a tile (:mod:`tessera_vz.core.cells`). Loading
the year's tiles table for that means fetching the year's snapshot (about
3 MB per 7,000 tiles), so 60 zones of a global year would be hundreds of
MB before the first paint. After each run, every zone described on
``main`` also gets its years' cell bitmaps (a few kB each) on its branch
:data:`~tessera_vz.core.cells.BRANCH`, each keyed by the snapshot of the
year branch it was computed from: a year whose branch has not moved
keeps its record without reading anything, and a reader ignores a record
whose snapshot is not the one it reads.
"""

from __future__ import annotations

import logging
from typing import Any

import icechunk as ic
import zarr

from tessera_vz.core import cells
from tessera_vz.core.layout import TILES, branch_name, year_of_branch

log = logging.getLogger(__name__)


def _recorded(repo: ic.Repository) -> dict[str, Any]:
    """The records the repository holds now (``{}`` when none or unreadable)."""
    if cells.BRANCH not in repo.list_branches():
        return {}
    try:
        store = repo.readonly_session(branch=cells.BRANCH).store
        doc = zarr.open_group(store, mode="r", zarr_format=3).attrs.get(cells.ATTRIBUTE)
    except (KeyError, ValueError, ic.IcechunkError, FileNotFoundError):
        return {}
    if not isinstance(doc, dict) or doc.get("version") != cells.VERSION:
        return {}
    years = doc.get("years")
    return dict(years) if isinstance(years, dict) else {}


def _year_record(repo: ic.Repository, zone: int, year: int, snapshot: str) -> dict[str, Any]:
    """The record of one year, from the ``lon`` and ``lat`` columns of its tiles table."""
    store = repo.readonly_session(snapshot_id=snapshot).store
    lon, lat = (zarr.open_array(store, path=f"{TILES}/{c}", mode="r", zarr_format=3)[:]
                for c in ("lon", "lat"))  # fmt: skip
    return cells.encode(cells.cell_set(zone, year, snapshot, lon, lat))  # type: ignore[arg-type]


def record_coverage(repo: ic.Repository, zone: int) -> bool:
    """Bring the cell records of ``zone`` up to date; ``True`` if it committed.

    Derived from the year branches alone, so concurrent runs converge: on a
    conflict the records are recomputed (unchanged years cost nothing) and
    committed again.
    """
    for _attempt in range(8):
        before = _recorded(repo)
        years: dict[str, Any] = {}
        for branch in sorted(repo.list_branches()):
            year = year_of_branch(branch)
            if year is None:
                continue
            snapshot = str(repo.lookup_branch(branch_name(year)))
            old = before.get(str(year))
            if isinstance(old, dict) and old.get("snapshot") == snapshot:
                years[str(year)] = old
                continue
            try:
                years[str(year)] = _year_record(repo, zone, year, snapshot)
            except (KeyError, FileNotFoundError):
                log.info("zone %d year %d has no tiles table: no coverage record", zone, year)
        if years == before:
            return False
        if cells.BRANCH not in repo.list_branches():
            try:
                repo.create_branch(cells.BRANCH, snapshot_id=repo.lookup_branch("main"))
            except ic.IcechunkError:  # a concurrent run created it: commit on it
                log.info("branch %s of zone %d appeared meanwhile", cells.BRANCH, zone)
        session = repo.writable_session(cells.BRANCH)
        root = zarr.open_group(session.store, mode="a", zarr_format=3)
        root.attrs.put({cells.ATTRIBUTE: {"version": cells.VERSION, "years": years}})
        try:
            session.commit("record coverage")
            return True
        except ic.ConflictError:
            log.info("the coverage of zone %d moved while recording it; retrying", zone)
    raise RuntimeError(f"could not record the coverage of zone {zone} after repeated conflicts")
