"""An index run: inventory -> diff -> header probes -> records -> one commit per (zone, year).

Units of (zone, year) are independent: each has its own repository branch,
so a failure or a conflict in one never touches another, and a tile that
fails is reported while the rest of its unit is committed. Only tiles that
the inventory shows new or changed are probed (:mod:`.sync`), unless
``reprobe`` asks for a full pass.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import xarray as xr
from zarr.core.sync import sync

from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.errors import ConfigurationError, InvalidTileError, NpyFormatError
from tessera_vz.core.geometry import tile_grids
from tessera_vz.core.layout import CHUNK_BUDGET, branch_name
from tessera_vz.core.options import ReadOptions, RetryPolicy
from tessera_vz.core.repos import quiet_icechunk
from tessera_vz.core.s3 import split_options
from tessera_vz.core.table import COLUMN_DEFAULTS, COLUMNS, read_table
from tessera_vz.indexer import inventory
from tessera_vz.indexer.locks import repo_lock
from tessera_vz.indexer.memory import limit_arenas
from tessera_vz.indexer.probe import EXTRA_PASSES, PASS_DELAY, Probe, ProbeError, probe_all
from tessera_vz.indexer.publish import write_zone_list
from tessera_vz.indexer.record import TileRecord, build_record
from tessera_vz.indexer.report import Failure, Report, TileWarning
from tessera_vz.indexer.roots import SourceRoot, object_store, source_reader, source_root
from tessera_vz.indexer.sync import diff_unit, recorded_table
from tessera_vz.indexer.writer import (
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
    #: Prefixes trusted besides SOURCE: where its redirects may lead (a CDN).
    allowed_sources: list[str] = field(default_factory=list)
    #: A PEM file of extra certificate authorities to trust (default
    #: ``$SSL_CERT_FILE``), never recorded in the repository.
    ca_file: str | None = None
    #: Tiles per scratch-branch commit (bounds memory; see ``write_unit``).
    batch_tiles: int = 1000
    #: Scratch branches of killed runs older than this (seconds) are deleted.
    scratch_max_age: float = SCRATCH_MAX_AGE
    #: Run the (zone, year) units on a Dask cluster: the scheduler's address,
    #: or ``workers`` worker processes of a LocalCluster (needs ``distributed``).
    scheduler: str | None = None
    workers: int | None = None
    #: Probe every listed tile, even those the inventory shows unchanged.
    reprobe: bool = False
    #: Bounded extra passes over files whose probes failed transiently
    #: (see :func:`~tessera_vz.indexer.probe.probe_all`); 0 disables them.
    extra_passes: int = EXTRA_PASSES


def _inventory(opts: IndexOptions, root: SourceRoot, store: Any) -> tuple[pa.Table, list[Failure]]:
    if opts.manifest:
        manifest = inventory.open_manifest(
            opts.manifest, options=source_options(opts), read=read_options(opts)
        )
        return inventory.manifest_inventory(manifest, root, years=opts.years, zones=opts.zones)
    if root.scheme in ("http", "https"):
        raise ConfigurationError(
            f"source {root.url} is served over {root.scheme.upper()}, which has no directory "
            "listing; pass --manifest (the upstream manifest.parquet) to say which tiles exist"
        )
    return inventory.listing_inventory(store, years=opts.years, zones=opts.zones)


def _year_tip(repo: Any, year: int) -> str | None:
    """Snapshot the year branch points at now, or ``None`` if it does not exist."""
    if repo is None or branch_name(year) not in repo.list_branches():
        return None
    return str(repo.lookup_branch(branch_name(year)))


def _existing_table(repo: Any, tip: str | None) -> xr.Dataset | None:
    """The tiles table at snapshot ``tip`` (the state this run's changes are based on)."""
    if repo is None or tip is None:
        return None
    return read_table(repo.readonly_session(snapshot_id=tip).store)


def _rows_of(table: xr.Dataset | None, only: set[str] | None = None) -> dict[str, dict[str, Any]]:
    """Rows of a tiles table as dicts (all, or those named in ``only``).

    Columns added to the layout later get their defaults, so a table written
    before them is rewritten whole with the current columns.
    """
    if table is None:
        return {}
    names = [str(n) for n in table["tile"].values]
    cols = {c: table[c].values for c in COLUMNS if c in table}
    defaults = {c: v for c, v in COLUMN_DEFAULTS.items() if c not in cols}
    return {
        n: {**{c: cols[c][i].item() for c in cols}, **defaults}
        for i, n in enumerate(names)
        if only is None or n in only
    }


def _existing_rows(repo: Any, tip: str | None) -> dict[str, dict[str, Any]]:
    """The tiles table at snapshot ``tip`` as rows."""
    return _rows_of(_existing_table(repo, tip))


def _fingerprint(row: dict[str, Any]) -> tuple[int, int, str, str]:
    return (
        int(row["emb_size"]),
        int(row["scales_size"]),
        str(row["emb_checksum"]),
        str(row["scales_checksum"]),
    )


def _pass_delays(opts: IndexOptions) -> list[float]:
    """Pauses before the extra probe passes: the retries' backoff, continued.

    The first pause is what the next retry would have waited (at least
    :data:`~tessera_vz.indexer.probe.PASS_DELAY`), doubling after it.
    """
    first = max(PASS_DELAY, opts.backoff * 2**opts.retries)
    return [first * 2**k for k in range(opts.extra_passes)]


def _probe(
    tiles: list[inventory.TileSource],
    opts: IndexOptions,
    root: SourceRoot,
    files: SourceFiles,
    report: Report,
    advance: Callable[[int], None],
) -> list[TileRecord]:
    """Probe the tiles' files and validate them; failures go into ``report``."""
    t0 = time.perf_counter()
    paths = [p for t in tiles for p in (t.emb_path, t.scales_path)]
    probes: dict[str, Probe | ProbeError] = sync(
        probe_all(
            files,
            root,
            paths,
            concurrency=opts.concurrency,
            on_done=advance,
            extra_passes=opts.extra_passes,
            pass_delays=_pass_delays(opts),
        )
    )
    t1 = time.perf_counter()
    report.timings["probe"] = t1 - t0
    for res in probes.values():
        if res.extra_pass:
            report.retried += 1
            report.recovered += isinstance(res, Probe)
    if not tiles:
        return []
    grids = tile_grids(np.array([t.lon for t in tiles]), np.array([t.lat for t in tiles]))
    records: list[TileRecord] = []
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
            bad = (
                sca.path
                if isinstance(sca, ProbeError) and not isinstance(emb, ProbeError)
                else tile.emb_path
            )
            report.failed.append(Failure(tile.year, tile.name, root.url_of(bad), str(exc)))
            continue
        if rec.warning:
            report.warnings.append(TileWarning(tile.year, tile.name, rec.warning))
        records.append(rec)
    report.timings["validate"] = time.perf_counter() - t1
    return records


def index_unit(
    zone: int,
    year: int,
    tiles: pa.Table | Sequence[inventory.TileSource],
    opts: IndexOptions,
    root: SourceRoot,
    files: SourceFiles,
    progress: ProgressStart = _no_progress,
) -> Report:
    """Index one (zone, year) unit and commit it if anything changed.

    ``tiles`` is the unit's inventory (a table of
    :data:`~tessera_vz.indexer.inventory.INVENTORY_SCHEMA`, or tile sources).
    """
    report = Report()
    listed = tiles if isinstance(tiles, pa.Table) else inventory.inventory_table(tiles)
    t0 = time.perf_counter()
    s3 = {"s3_options": opts.s3_options, "source_s3_options": source_s3_options(opts)}
    repo = open_repo(opts.out, zone, root, create=False, **s3)
    if repo is not None:
        clean_scratch_branches(repo, year, opts.scratch_max_age)
    # The table is read at one snapshot and the new one is published only if
    # the branch still points there, so a concurrent run cannot be overwritten
    # with rows computed from a state it already changed.
    tip = _year_tip(repo, year)
    old = _existing_table(repo, tip)
    diff = diff_unit(listed, recorded_table(old), root.url, reprobe=opts.reprobe)
    report.skipped += diff.skipped
    report.unchanged += diff.skipped
    t1 = time.perf_counter()
    to_probe = inventory.tile_sources(diff.probe)
    advance = progress(f"headers utm{zone:02d} {year}", 2 * len(to_probe))
    log.info(
        "zone %d year %d: %d tiles listed, %d unchanged in the inventory, reading %d headers",
        zone, year, listed.num_rows, diff.skipped, 2 * len(to_probe),
    )  # fmt: skip
    report.timings["diff"] = t1 - t0
    records = _probe(to_probe, opts, root, files, report, advance)

    prev_rows = _rows_of(old, {r.name for r in records})
    updates: dict[str, dict[str, Any]] = {}
    changed: list[TileRecord] = []
    for rec in records:
        prev = prev_rows.get(rec.name)
        if (
            prev is not None
            and _fingerprint(prev) == rec.fingerprint
            and prev.get("source") == root.url
        ):
            report.unchanged += 1
            facts = {"emb_listed": rec.source.emb_listed, "scales_listed": rec.source.scales_listed}
            if any(prev.get(k) != v for k, v in facts.items()):
                # Same files, new inventory facts: only the table row changes.
                updates[rec.name] = {**prev, **facts}
                report.refreshed += 1
            continue
        changed.append(rec)
        updates[rec.name] = record_row(rec, root)
    if not changed and not diff.removed and not updates and not layout_outdated(repo, tip):
        log.info("zone %d year %d: nothing changed", zone, year)
        return report
    if repo is None:
        repo = open_repo(opts.out, zone, root, create=True, **s3)
    rows = _rows_of(old)
    rows.update(updates)
    for n in diff.removed:
        del rows[n]
    drop = diff.removed + [r.name for r in changed if r.name in prev_rows]
    advance_w = progress(f"commit  utm{zone:02d} {year}", 1)
    commit = write_unit(
        repo, zone, year, changed, drop, rows, root, opts.chunk_budget, report.timings,
        batch_tiles=opts.batch_tiles, expected_tip=tip,
    )  # fmt: skip
    advance_w(1)
    report.commits.append(commit)
    report.indexed += len(changed)
    report.removed += len(diff.removed)
    return report


def read_options(opts: IndexOptions) -> ReadOptions:
    """How the run reads its source: retry policy, the source's S3 settings, extra CA."""
    policy = RetryPolicy(retries=opts.retries, timeout=opts.timeout, backoff=opts.backoff)
    s3 = tuple(sorted(source_s3_options(opts).items()))
    return ReadOptions(policy=policy, s3_options=s3, ca_file=opts.ca_file)


def source_files(opts: IndexOptions, root: SourceRoot) -> SourceFiles:
    """The boundary the run reads its source through (see :func:`source_reader`)."""
    return source_reader(root, read_options(opts), opts.allowed_sources)


def source_options(opts: IndexOptions) -> dict[str, Any]:
    """obstore options of the source (listings): read policy, S3 settings, explicit options.

    ``opts.s3_options`` apply to the source as to the index; S3 keys in
    ``opts.source_options`` (e.g. ``anonymous``) override them for the source only.
    """
    retry = read_options(opts).policy.obstore()
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
    tiles: pa.Table | Sequence[inventory.TileSource],
    root: SourceRoot | None = None,
    files: SourceFiles | None = None,
    progress: ProgressStart = _no_progress,
) -> Report:
    """Index one (zone, year) unit in whatever process runs it.

    Called with picklable arguments only (``root`` and ``files`` omitted) it
    opens its own source reader and repository, so a Dask worker can run it.
    Holds the zone's write lock for a local repository (see
    :mod:`~tessera_vz.indexer.locks`), and reports a unit that another run
    published meanwhile as a failure instead of raising.
    """
    quiet_icechunk()
    if root is None:
        root = source_root(opts.source)
    if files is None:
        files = source_files(opts, root)
    with repo_lock(opts.out, zone):
        try:
            return index_unit(zone, year, tiles, opts, root, files, progress)
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
    if opts.extra_passes < 0:
        raise ConfigurationError(f"extra passes must be >= 0, got {opts.extra_passes}")
    bad = [z for z in opts.zones or [] if not 1 <= z <= 60]
    if bad:
        raise ConfigurationError(f"UTM zones are 1-60; --zones names {bad[0]}")
    files = source_files(opts, root)
    store = None if root.is_http else object_store(root, options=source_options(opts))
    tiles, failures = _inventory(opts, root, store)
    report = Report(failed=list(failures))
    units = inventory.split_units(tiles)
    if not units and not failures:
        raise ConfigurationError(_nothing_selected(opts, root.url))
    del tiles
    t1 = time.perf_counter()
    report.timings["inventory"] = t1 - t0
    by_zone: dict[int, list[int]] = defaultdict(list)
    if opts.scheduler or opts.workers:
        from tessera_vz.indexer.distributed import run_units

        done = run_units(opts, units, progress)
    else:
        done = (
            ((zone, year), run_unit(opts, zone, year, units[(zone, year)], root, files, progress))
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
    # The zone list a reader of a published copy needs, in step with the repos.
    write_zone_list(opts.out, opts.s3_options)
    report.timings["describe"] = time.perf_counter() - t2
    report.timings["total"] = time.perf_counter() - t0
    return report


def _nothing_selected(opts: IndexOptions, url: str) -> str:
    """Why a run has nothing to do: the source holds no tile, or none the filters select."""
    where = f"the manifest {opts.manifest}" if opts.manifest else url
    only = []
    if opts.years:
        only.append(f"years {','.join(map(str, opts.years))}")
    if opts.zones:
        only.append(f"UTM zones {','.join(map(str, opts.zones))}")
    if only:
        return (
            f"nothing to index: {where} lists no tile of {' in '.join(only)}; check --years and "
            "--zones (nothing was written)"
        )
    return (
        f"nothing to index: {where} lists no tile ({{year}}/grid_LON_LAT/grid_LON_LAT.npy); "
        "check the path (nothing was written)"
    )


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
