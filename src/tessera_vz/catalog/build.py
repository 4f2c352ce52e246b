"""A catalog run: index -> ``tiles.parquet``, ``stac/``, ``coverage.png``.

1. List the index's units: every (zone, year) branch and the snapshot it
   points at now, plus the tag pointing at the same snapshot (a few small
   reads per zone; no tiles table is read yet).
2. Plan against what the catalog holds (:mod:`.incremental`): a unit whose
   snapshot is unchanged and whose rows, items and unit catalog all still
   show that snapshot is kept; others are rebuilt; units gone from the index
   are removed. Nothing to do means nothing is written.
3. Rebuild: per unit, read its tiles table, compute rows and Items, write
   the unit's Item files, and stage its rows and Items as Parquet parts.
4. Assemble ``tiles.parquet`` and ``stac/items.parquet`` unit by unit in
   (zone, year) order: kept units' row groups copied from the previous files,
   rebuilt units' from their parts (:mod:`.assemble`); then the Collection,
   the coverage PNG, and last the state file.

A unit that cannot be read (a zone whose repository fails to open, a table
that fails to load) is reported and keeps whatever the catalog had for it;
the rest are catalogued, and the exit code says some failed.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import icechunk as ic
import pyarrow.parquet as pq

from tessera_vz.catalog import coverage, stac, tables
from tessera_vz.catalog.assemble import assemble_items, assemble_tiles, remove_strays
from tessera_vz.catalog.bulk import ITEMS_MODES
from tessera_vz.catalog.incremental import (
    CATALOG_VERSION,
    WORK_DIR,
    CatalogState,
    RowGroups,
    UnitState,
    catalog_lock,
    load_state,
    row_groups,
    save_state,
)
from tessera_vz.catalog.tables import UnitVersion, unit_key
from tessera_vz.catalog.units import UnitDone, build_units, workers
from tessera_vz.core.errors import ConfigurationError, TesseraError
from tessera_vz.core.layout import parse_tag, repo_name
from tessera_vz.core.progress import ProgressStart, no_progress
from tessera_vz.core.urls import join
from tessera_vz.reader import ReadOptions, open_store

log = logging.getLogger(__name__)

TILES_PARQUET = "tiles.parquet"
COVERAGE_PNG = "coverage.png"
STAC_DIR = "stac"


@dataclass
class CatalogOptions:
    """Settings of a catalog run (the CLI's arguments)."""

    store: str
    out: str
    allow_local_sources: bool = False
    allowed_sources: list[str] | None = None
    s3_options: dict[str, Any] = field(default_factory=dict)
    collection_id: str = stac.COLLECTION_ID
    #: How to read the index (retries, timeouts, CA, trusted sources); when
    #: given it replaces the three fields above.
    read: ReadOptions | None = None
    #: Where the index will be published (``https://host/index``, ``s3://...``):
    #: the STAC ``index`` assets and the ``repo`` column then point under it.
    #: Default: relative to the catalog for a local index, its URL otherwise.
    base_url: str | None = None
    #: How Items are written: ``"json"`` (one file per Item plus ``items.parquet``)
    #: or ``"geoparquet"`` (``items.parquet`` only, built in bulk: :mod:`.bulk`).
    items: str = "json"
    #: Processes building zone-years. Default: one; with ``items="geoparquet"`` and
    #: 16 zone-years or more, a pool of the cores takes over once the zone-years
    #: left would take over 20 s in one process (:func:`.units.build_units`).
    jobs: int | None = None


@dataclass
class CatalogReport:
    """What a run did; ``to_json`` is the CLI's ``--json`` document."""

    store: str
    out: str
    built: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    #: Output files replaced by this run (paths relative to ``out``); empty when nothing changed.
    written: list[str] = field(default_factory=list)
    rows_built: int = 0
    rows_copied: int = 0
    items_written: int = 0
    items_deleted: int = 0
    tiles: int = 0
    #: Processes that built the zone-years.
    jobs: int = 1
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "out": self.out,
            "tiles": self.tiles,
            "units": {"built": self.built, "kept": self.kept, "removed": self.removed},
            "failed": self.failed,
            "written": self.written,
            "rows_built": self.rows_built,
            "rows_copied": self.rows_copied,
            "items_written": self.items_written,
            "items_deleted": self.items_deleted,
            "jobs": self.jobs,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


def index_href(root: str, out: Path, base_url: str | None = None) -> str:
    """Where the catalog finds the index: ``base_url``, its URL, or a path relative to ``out``.

    A local index is named relative to the catalog folder (``../index``), so
    the two can be published side by side on any web server, or moved
    together, and no local path of the machine that built the catalog leaks
    into it. ``base_url`` (the index's published address) wins.
    """
    if base_url:
        return base_url.rstrip("/")
    parts = urlsplit(root)
    if parts.scheme in ("", "file"):
        base = Path(unquote(parts.path) if parts.scheme == "file" else root).expanduser()
        return Path(os.path.relpath(base.resolve(), out.resolve())).as_posix()
    return root.rstrip("/")


def repo_href(index: str, zone: int) -> str:
    """A zone's repository under :func:`index_href` (a relative path or a URL)."""
    return join(index, repo_name(zone)) if "://" in index else f"{index}/{repo_name(zone)}"


def _tag_of(repo: Any, tags: Iterable[str], year: int, snapshot: str) -> str | None:
    """The newest ``{year}-v{n}`` tag pointing at ``snapshot`` (usually the newest tag)."""
    versions = {t: p[1] for t in tags if (p := parse_tag(t)) is not None and p[0] == year}
    mine = sorted(versions.items(), key=lambda kv: kv[1], reverse=True)
    for tag, _version in mine:
        if str(repo.lookup_tag(tag)) == snapshot:
            return tag
    return None


def _units(store: Any, report: CatalogReport, index: str) -> tuple[list[UnitVersion], set[int]]:
    """Every (zone, year) of the index at its current snapshot; zones that failed.

    ``index`` is where the catalog's links find the index (:func:`index_href`).
    """
    units: list[UnitVersion] = []
    failed_zones: set[int] = set()
    for zone in store.zones():
        try:
            repo = store.repo(zone)
            years = store.years(zone)
            tags = list(repo.list_tags())
            containers = tuple(store.containers(zone))
            for year in years:
                snap = str(repo.lookup_branch(str(year)))
                units.append(
                    UnitVersion(zone, year, snap, _tag_of(repo, tags, year, snap),
                                repo_href(index, zone), containers)
                )  # fmt: skip
        except (ic.IcechunkError, TesseraError, OSError, ValueError) as exc:
            # A zone that cannot be opened or listed (missing, damaged, unauthorised):
            # reported, and its units keep what the catalog had; the other zones go on.
            log.error("zone %d: %s", zone, exc)
            failed_zones.add(zone)
            report.failed.append(
                {"zone": zone, "year": None, "reason": f"cannot list the repository: {exc}"}
            )
    return units, failed_zones


def _holds(rg: RowGroups | None, unit: UnitVersion, tiles: int) -> bool:
    return rg is not None and rg.holds(unit.zone, unit.year, unit.snapshot, tiles)


def _plan(
    units: list[UnitVersion],
    state: CatalogState | None,
    tiles_rg: RowGroups | None,
    items_rg: RowGroups | None,
    stac_dir: Path,
) -> tuple[list[UnitVersion], list[UnitVersion]]:
    """Split current units into (kept, to build)."""
    kept: list[UnitVersion] = []
    build: list[UnitVersion] = []
    for u in units:
        prev = state.units.get(u.key) if state else None
        ok = (
            prev is not None
            and prev.snapshot == u.snapshot
            and _holds(tiles_rg, u, prev.tiles)
            and _holds(items_rg, u, prev.tiles)
            and stac.unit_snapshot(stac_dir, u.zone, u.year) == u.snapshot
        )
        (kept if ok else build).append(u)
    return kept, build


def build_catalog(opts: CatalogOptions, progress: ProgressStart = no_progress) -> CatalogReport:
    """Bring the catalog in ``opts.out`` up to date with the index ``opts.store``.

    Raises :class:`ConfigurationError` (nothing written) when the index
    cannot be opened or ``out`` is not a local directory; a unit that fails
    is reported in the returned report and keeps what the catalog had.
    """
    t0 = time.perf_counter()
    if urlsplit(opts.out).scheme not in ("", "file"):
        raise ConfigurationError(
            f"--out must be a local directory, got {opts.out!r}; write the catalog locally, "
            "then copy or sync it next to the index"
        )
    if opts.items not in ITEMS_MODES:
        raise ConfigurationError(
            f"items must be one of {', '.join(ITEMS_MODES)}, got {opts.items!r}: 'json' writes "
            "one file per Item (and items.parquet), 'geoparquet' only items.parquet"
        )
    out = Path(unquote(urlsplit(opts.out).path) if opts.out.startswith("file:") else opts.out)
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"--out {opts.out!r} exists and is not a directory")
    read = opts.read or ReadOptions.of(
        allow_local_sources=opts.allow_local_sources,
        allowed_sources=opts.allowed_sources,
        s3_options=opts.s3_options or None,
    )
    store = open_store(opts.store, options=read)
    report = CatalogReport(store=opts.store, out=str(out))
    with catalog_lock(out):
        _run(store, opts, out, report, progress)
    report.timings["total"] = time.perf_counter() - t0
    return report


def _run(
    store: Any, opts: CatalogOptions, out: Path, report: CatalogReport, progress: ProgressStart
) -> None:
    t0 = time.perf_counter()
    stac_dir = out / STAC_DIR
    index = index_href(store.root, out, opts.base_url)
    units, failed_zones = _units(store, report, index)
    state = load_state(out)
    if state is not None and (
        state.version != CATALOG_VERSION
        or state.store != _store_id(store.root)
        or state.collection_id != opts.collection_id
        or state.index_href != index
        or state.items != opts.items
    ):
        log.info("catalog in %s was written for another index or version: rebuilding", out)
        state = None
    tiles_rg = row_groups(out / TILES_PARQUET, "zone", "year", "snapshot") if state else None
    items_rg = (
        row_groups(
            stac_dir / stac.ITEMS_PARQUET, "tessera:zone", "tessera:year", "tessera:snapshot"
        )
        if state
        else None
    )
    kept, build = _plan(units, state, tiles_rg, items_rg, stac_dir)
    current = {u.key for u in units}
    # Units of zones that failed to list keep what the catalog had (reported as failed).
    stale = [
        s for k, s in (state.units.items() if state else [])
        if k not in current and s.zone in failed_zones
        and _holds(tiles_rg, _as_version(s), s.tiles) and _holds(items_rg, _as_version(s), s.tiles)
    ]  # fmt: skip
    removed = [
        s for k, s in (state.units.items() if state else [])
        if k not in current and s.zone not in failed_zones
    ]  # fmt: skip
    report.timings["plan"] = time.perf_counter() - t0
    outputs = [out / TILES_PARQUET, stac_dir / stac.ITEMS_PARQUET,
               stac_dir / stac.COLLECTION_FILE, out / COVERAGE_PNG]  # fmt: skip
    if not build and not removed and state is not None and all(p.exists() for p in outputs):
        report.kept = [_unit_json(u, state.units[u.key].tiles) for u in kept]
        report.tiles = sum(state.units[u.key].tiles for u in kept) + sum(s.tiles for s in stale)
        log.info("catalog %s is up to date with %s", out, store.root)
        return

    work = out / WORK_DIR
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    new_states: dict[str, UnitState] = {}
    t1 = time.perf_counter()
    advance = progress("catalog units", len(build))
    jobs = workers(opts.items, len(build), opts.jobs)
    report.jobs = jobs if opts.jobs is not None else 1

    def pooled(n: int) -> None:
        report.jobs = n

    units_built = build_units(store, build, opts.collection_id, stac_dir, work, opts.items, jobs,
                              adaptive=opts.jobs is None, on_pool=pooled)  # fmt: skip
    for u, done in units_built:
        if isinstance(done, UnitDone):
            new_states[u.key] = done.state
            report.items_written += done.items_written
            report.items_deleted += done.items_deleted
            report.rows_built += done.rows
            report.failed += done.failed
        else:
            # A deliberate catch-all (in :func:`build_units`): a unit is read (Icechunk,
            # our reader), computed (shapely, pyproj, pyarrow) and written
            # (stac-geoparquet, files), and whatever fails in one unit must not stop
            # the others; it is reported and keeps its previous rows.
            exc = done
            log.error("unit %s: %s", u.key, exc)
            report.failed.append({"zone": u.zone, "year": u.year, "reason": str(exc)})
            prev = state.units.get(u.key) if state else None
            if (
                prev is not None
                and _holds(tiles_rg, _as_version(prev), prev.tiles)
                and _holds(items_rg, _as_version(prev), prev.tiles)
            ):
                stale.append(prev)
        advance(1)
    report.timings["build"] = time.perf_counter() - t1

    # The catalog now holds: kept units (as before), rebuilt units, stale units.
    final: dict[str, UnitState] = {u.key: state.units[u.key] for u in kept} if state else {}
    final.update({unit_key(s.zone, s.year): s for s in stale})
    final.update(new_states)
    order = sorted(final.values(), key=lambda s: (s.zone, s.year))
    report.kept = [_unit_json(u, final[u.key].tiles) for u in kept]
    report.tiles = sum(s.tiles for s in order)
    if not new_states and not removed and state is not None and all(p.exists() for p in outputs):
        # Every unit to rebuild failed: the files still show what they showed.
        shutil.rmtree(work, ignore_errors=True)
        return
    t2 = time.perf_counter()
    for s in removed:
        shutil.rmtree(stac_dir / stac.unit_dir(s.zone, s.year), ignore_errors=True)
        report.items_deleted += s.tiles
    remove_strays(stac_dir, {(s.zone, s.year) for s in order})
    report.rows_copied += assemble_tiles(out / TILES_PARQUET, order, new_states, tiles_rg, work)
    report.written.append(TILES_PARQUET)
    report.timings["assemble_tiles"] = time.perf_counter() - t2
    assemble_items(
        stac_dir / stac.ITEMS_PARQUET, order, new_states, items_rg, work, opts.collection_id
    )
    report.written.append(f"{STAC_DIR}/{stac.ITEMS_PARQUET}")
    report.timings["assemble_items"] = time.perf_counter() - t2 - report.timings["assemble_tiles"]
    t3 = time.perf_counter()
    coll = stac.collection(
        [{**vars(s)} for s in order],
        tables.merge_bbox([s.bbox for s in order]),
        [c for s in order for c in s.epsg],
        opts.collection_id,
    )
    stac.write_json(stac_dir / stac.COLLECTION_FILE, coll)
    report.written.append(f"{STAC_DIR}/{stac.COLLECTION_FILE}")
    cols = pq.read_table(out / TILES_PARQUET, columns=["lon", "lat", "year"])
    coverage.render(out / COVERAGE_PNG, cols["lon"].to_numpy(), cols["lat"].to_numpy(),
                    cols["year"].to_numpy())  # fmt: skip
    report.written.append(COVERAGE_PNG)
    report.timings["coverage"] = time.perf_counter() - t3
    shutil.rmtree(work, ignore_errors=True)
    save_state(out, CatalogState(CATALOG_VERSION, _store_id(store.root), opts.collection_id,
                                 {unit_key(s.zone, s.year): s for s in order}, index,
                                 opts.items))  # fmt: skip
    report.written.append("catalog-state.json")
    report.timings["assemble"] = time.perf_counter() - t2
    report.built = [_unit_json(u, new_states[u.key].tiles) for u in build if u.key in new_states]
    report.removed = [{"zone": s.zone, "year": s.year, "snapshot": s.snapshot} for s in removed]


def _store_id(root: str) -> str:
    """The index a catalog describes, as recorded in the state (local paths made absolute)."""
    parts = urlsplit(root)
    if parts.scheme in ("", "file"):
        base = Path(unquote(parts.path) if parts.scheme == "file" else root).expanduser()
        return str(base.resolve())
    return root.rstrip("/")


def _as_version(s: UnitState) -> UnitVersion:
    return UnitVersion(s.zone, s.year, s.snapshot, s.tag, "")


def _unit_json(u: UnitVersion, tiles: int) -> dict[str, Any]:
    return {"zone": u.zone, "year": u.year, "snapshot": u.snapshot, "tag": u.tag, "tiles": tiles}
