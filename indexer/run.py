"""An index run: inventory -> header probes -> records -> one commit per (zone, year).

Units of (zone, year) are independent: each has its own repository branch,
so a failure or a conflict in one never touches another, and a tile that
fails is reported while the rest of its unit is committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tessera_vz.reader.errors import ConfigurationError, InvalidTileError, NpyFormatError
from tessera_vz.reader.geometry import tile_grids
from tessera_vz.reader.layout import CHUNK_BUDGET, branch_name
from tessera_vz.reader.repos import quiet_icechunk
from tessera_vz.reader.s3 import split_options
from tessera_vz.reader.table import COLUMNS, read_table

from . import inventory
from .locks import repo_lock
from .memory import limit_arenas
from .probe import Probe, ProbeError, probe_all
from .record import TileRecord, build_record
from .report import Failure, Report, TileWarning
from .sources import SourceRoot, object_store, retry_options, source_root
from .writer import (
    SCRATCH_MAX_AGE,
    UnitConflictError,
    clean_scratch_branches,
    layout_outdated,
    open_repo,
    record_row,
    update_main,
    write_unit,
)

log = logging.getLogger(__name__)

#: ``start(label, total)`` returns an ``advance(n)`` callable; lets the CLI
#: draw rich progress bars without the run depending on a terminal.
ProgressStart = Callable[[str, int], Callable[[int], None]]


def _no_progress(_label: str, _total: int) -> Callable[[int], None]:
    return lambda _n: None


@dataclass
class IndexOptions:
    """Settings of an index run (the CLI's arguments)."""

    source: str
    out: str
    manifest: str | None = None
    years: list[int] | None = None
    zones: list[int] | None = None
    concurrency: int = 64
    chunk_budget: int = CHUNK_BUDGET
    source_options: dict[str, Any] = field(default_factory=dict)
    s3_options: dict[str, Any] = field(default_factory=dict)
    #: Retries of a failed header read (503, reset, timeout), with exponential
    #: backoff from ``backoff`` seconds; ``timeout`` bounds each attempt.
    retries: int = 3
    timeout: float = 30.0
    backoff: float = 0.1
    #: Tiles per scratch-branch commit (bounds memory; see ``write_unit``).
    batch_tiles: int = 1000
    #: Scratch branches of killed runs older than this (seconds) are deleted.
    scratch_max_age: float = SCRATCH_MAX_AGE
    #: Run the (zone, year) units on a Dask cluster: the scheduler's address,
    #: or ``workers`` worker processes of a LocalCluster (needs ``distributed``).
    scheduler: str | None = None
    workers: int | None = None


def _inventory(
    opts: IndexOptions, root: SourceRoot, store: Any
) -> tuple[list[inventory.TileSource], list[Failure]]:
    if opts.manifest:
        table = inventory.read_manifest_table(opts.manifest, options=source_options(opts))
        return inventory.from_manifest(table, root, years=opts.years, zones=opts.zones)
    if root.scheme in ("http", "https"):
        raise ConfigurationError(
            f"source {root.url} is served over {root.scheme.upper()}, which has no directory "
            "listing; pass --manifest (the upstream manifest.parquet) to say which tiles exist"
        )
    return inventory.from_listing(store, years=opts.years, zones=opts.zones)


def _year_tip(repo: Any, year: int) -> str | None:
    """Snapshot the year branch points at now, or ``None`` if it does not exist."""
    if repo is None or branch_name(year) not in repo.list_branches():
        return None
    return str(repo.lookup_branch(branch_name(year)))


def _existing_rows(repo: Any, tip: str | None) -> dict[str, dict[str, Any]]:
    """The tiles table at snapshot ``tip`` (the state this run's changes are based on)."""
    if repo is None or tip is None:
        return {}
    table = read_table(repo.readonly_session(snapshot_id=tip).store)
    if table is None:
        return {}
    names = [str(n) for n in table["tile"].values]
    cols = {c: table[c].values for c in COLUMNS if c in table}
    return {n: {c: cols[c][i].item() for c in cols} for i, n in enumerate(names)}


def _fingerprint(row: dict[str, Any]) -> tuple[int, int, str, str]:
    return (
        int(row["emb_size"]),
        int(row["scales_size"]),
        str(row["emb_checksum"]),
        str(row["scales_checksum"]),
    )


def index_unit(
    zone: int,
    year: int,
    tiles: list[inventory.TileSource],
    opts: IndexOptions,
    root: SourceRoot,
    store: Any,
    progress: ProgressStart = _no_progress,
) -> Report:
    """Index one (zone, year) unit and commit it if anything changed."""
    report = Report()
    t0 = time.perf_counter()
    paths = [p for t in tiles for p in (t.emb_path, t.scales_path)]
    advance = progress(f"headers utm{zone:02d} {year}", len(paths))
    log.info("zone %d year %d: reading %d headers", zone, year, len(paths))
    probes: dict[str, Probe | ProbeError] = asyncio.run(
        probe_all(store, paths, concurrency=opts.concurrency, on_done=advance)
    )
    t1 = time.perf_counter()
    grids = tile_grids(np.array([t.lon for t in tiles]), np.array([t.lat for t in tiles]))
    records: list[TileRecord] = []
    failed_names: set[str] = set()
    for i, tile in enumerate(tiles):
        emb, sca = probes[tile.emb_path], probes[tile.scales_path]
        for p in (emb, sca):
            if isinstance(p, Probe):
                report.bytes_read += p.bytes_read
                report.requests += p.requests
            else:
                report.requests += 1
        try:
            if isinstance(emb, ProbeError):
                raise InvalidTileError(f"embeddings: {emb.reason}")
            if isinstance(sca, ProbeError):
                raise InvalidTileError(f"scales: {sca.reason}")
            rec = build_record(tile, emb, sca, grids, i, root, opts.chunk_budget)
        except (InvalidTileError, NpyFormatError) as exc:
            failed_names.add(tile.name)
            bad = (
                sca.path
                if isinstance(sca, ProbeError) and not isinstance(emb, ProbeError)
                else tile.emb_path
            )
            report.failed.append(Failure(year, tile.name, root.url_of(bad), str(exc)))
            continue
        if rec.warning:
            report.warnings.append(TileWarning(year, tile.name, rec.warning))
        records.append(rec)
    t2 = time.perf_counter()
    report.timings.update({"probe": t1 - t0, "validate": t2 - t1})

    repo = open_repo(
        opts.out, zone, root, create=bool(records), s3_options=opts.s3_options,
        source_s3_options=source_s3_options(opts),
    )  # fmt: skip
    if repo is not None:
        clean_scratch_branches(repo, year, opts.scratch_max_age)
    # The table is read at one snapshot and the new one is published only if
    # the branch still points there, so a concurrent run cannot be overwritten
    # with rows computed from a state it already changed.
    tip = _year_tip(repo, year)
    old = _existing_rows(repo, tip)
    rows = dict(old)
    changed: list[TileRecord] = []
    for rec in records:
        prev = old.get(rec.name)
        if (
            prev is not None
            and _fingerprint(prev) == rec.fingerprint
            and prev.get("source") == root.url
        ):
            report.unchanged += 1
            continue
        changed.append(rec)
        rows[rec.name] = record_row(rec, root)
    present = {t.name for t in tiles}
    removed = [n for n in old if n not in present]
    for n in removed:
        del rows[n]
    drop = removed + [r.name for r in changed if r.name in old]
    if not changed and not removed and not layout_outdated(repo, tip):
        log.info("zone %d year %d: nothing changed", zone, year)
        return report
    advance_w = progress(f"commit  utm{zone:02d} {year}", 1)
    commit = write_unit(
        repo, zone, year, changed, drop, rows, root, opts.chunk_budget, report.timings,
        batch_tiles=opts.batch_tiles, expected_tip=tip,
    )  # fmt: skip
    advance_w(1)
    report.commits.append(commit)
    report.indexed += len(changed)
    report.removed += len(removed)
    return report


def source_options(opts: IndexOptions) -> dict[str, Any]:
    """obstore options of the source: read policy, S3 settings, explicit options.

    ``opts.s3_options`` apply to the source as to the index; S3 keys in
    ``opts.source_options`` (e.g. ``anonymous``) override them for the source only.
    """
    retry = retry_options(retries=opts.retries, timeout=opts.timeout, backoff=opts.backoff)
    merged = {**opts.s3_options, **retry, **opts.source_options}
    merged["client_options"] = {
        **retry["client_options"],
        **opts.source_options.get("client_options", {}),
    }
    return merged


def source_s3_options(opts: IndexOptions) -> dict[str, Any]:
    """S3 settings of the source (see :func:`source_options`), for its container."""
    return {**opts.s3_options, **split_options(opts.source_options)[0]}


def run_unit(
    opts: IndexOptions,
    zone: int,
    year: int,
    tiles: list[inventory.TileSource],
    root: SourceRoot | None = None,
    store: Any = None,
    progress: ProgressStart = _no_progress,
) -> Report:
    """Index one (zone, year) unit in whatever process runs it.

    Called with picklable arguments only (``root`` and ``store`` omitted) it
    opens its own source store and repository, so a Dask worker can run it.
    Holds the zone's write lock for a local repository (see
    :mod:`~tessera_vz.indexer.locks`), and reports a unit that another run
    published meanwhile as a failure instead of raising.
    """
    quiet_icechunk()
    if root is None:
        root = source_root(opts.source)
    if store is None:
        store = object_store(root, options=source_options(opts))
    with repo_lock(opts.out, zone):
        try:
            return index_unit(zone, year, tiles, opts, root, store, progress)
        except UnitConflictError as exc:
            # Nothing of this unit was published; the other run's result stands.
            log.error("%s", exc)
            return Report(failed=[Failure(year, None, None, str(exc))])


def run_index(opts: IndexOptions, progress: ProgressStart = _no_progress) -> Report:
    """Index every (zone, year) unit of a source into ``opts.out``.

    Raises :class:`ConfigurationError` before writing anything when the
    arguments cannot work; every other problem is a tile-level failure in
    the returned report.
    """
    quiet_icechunk()
    limit_arenas()
    t0 = time.perf_counter()
    root = source_root(opts.source)
    if opts.chunk_budget <= 0:
        raise ConfigurationError(f"chunk budget must be positive, got {opts.chunk_budget}")
    if opts.workers is not None and opts.workers < 1:
        raise ConfigurationError(f"--workers must be at least 1, got {opts.workers}")
    store = object_store(root, options=source_options(opts))
    tiles, failures = _inventory(opts, root, store)
    report = Report(failed=list(failures))
    units: dict[tuple[int, int], list[inventory.TileSource]] = defaultdict(list)
    for t in tiles:
        units[(t.zone, t.year)].append(t)
    t1 = time.perf_counter()
    report.timings["inventory"] = t1 - t0
    by_zone: dict[int, list[int]] = defaultdict(list)
    if opts.scheduler or opts.workers:
        from .distributed import run_units

        done = run_units(opts, units, progress)
    else:
        done = (
            ((zone, year), run_unit(opts, zone, year, units[(zone, year)], root, store, progress))
            for zone, year in sorted(units)
        )
    for (zone, year), unit in done:
        report.merge(unit)
        if unit.commits:
            by_zone[zone].append(year)
    t2 = time.perf_counter()
    for zone in sorted(by_zone):
        with repo_lock(opts.out, zone):
            repo = open_repo(
                opts.out, zone, root, s3_options=opts.s3_options,
                source_s3_options=source_s3_options(opts),
            )  # fmt: skip
            update_main(repo, zone, [root.url])
    report.timings["describe"] = time.perf_counter() - t2
    report.timings["total"] = time.perf_counter() - t0
    return report


def parse_int_list(text: str | None, what: str) -> list[int] | None:
    """Parse ``2024,2025`` style CLI lists."""
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigurationError(
            f"--{what} expects comma-separated integers, got {text!r}"
        ) from None


def units_of(tiles: Iterable[inventory.TileSource]) -> set[tuple[int, int]]:
    """The (zone, year) units a set of tiles falls into."""
    return {(t.zone, t.year) for t in tiles}
