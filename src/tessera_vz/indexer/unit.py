"""Index one (zone, year) unit: diff the inventory, probe what changed, write one commit.

A unit is independent of every other: it has its own repository branch, so
a failure or a conflict in one never touches another, and a tile that fails
is reported while the rest of its unit is committed. Only tiles that the
inventory shows new or changed are probed (:mod:`.sync`), unless
``reprobe`` asks for a full pass. :func:`run_unit` runs one in whatever
process it lands in: the run's own loop or a Dask worker
(:mod:`~tessera_vz.indexer.distributed`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import icechunk as ic
import numpy as np
import pyarrow as pa
import xarray as xr

from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.errors import InvalidTileError, NpyFormatError
from tessera_vz.core.geometry import tile_grids
from tessera_vz.core.layout import branch_name
from tessera_vz.core.loop import sync
from tessera_vz.core.progress import ProgressStart, no_progress
from tessera_vz.core.repos import quiet_icechunk
from tessera_vz.core.table import read_table, table_rows
from tessera_vz.indexer.inventory import TileSource, inventory_table, tile_sources
from tessera_vz.indexer.locks import lock_path, repo_lock
from tessera_vz.indexer.memory import no_cycle_collection
from tessera_vz.indexer.migration import layout_outdated
from tessera_vz.indexer.probe import PASS_DELAY, Probe, ProbeError, probe_all
from tessera_vz.indexer.record import TileRecord, build_record
from tessera_vz.indexer.references import record_row
from tessera_vz.indexer.report import Failure, Report, TileWarning
from tessera_vz.indexer.repository import open_repo
from tessera_vz.indexer.roots import SourceRoot, source_root
from tessera_vz.indexer.run_options import (
    IndexOptions,
    source_files,
    source_s3_options,
)
from tessera_vz.indexer.sync import diff_unit, recorded_table
from tessera_vz.indexer.table_sidecar import write_table_blocks
from tessera_vz.indexer.transaction import UnitConflictError, clean_scratch_branches, write_unit

log = logging.getLogger(__name__)


def _year_tip(repo: ic.Repository | None, year: int) -> str | None:
    """Snapshot the year branch points at now, or ``None`` if it does not exist."""
    if repo is None or branch_name(year) not in repo.list_branches():
        return None
    return str(repo.lookup_branch(branch_name(year)))


def _existing_table(repo: ic.Repository | None, tip: str | None) -> xr.Dataset | None:
    """The tiles table at snapshot ``tip`` (the state this run's changes are based on)."""
    if repo is None or tip is None:
        return None
    return read_table(repo.readonly_session(snapshot_id=tip).store)


def _existing_rows(repo: ic.Repository | None, tip: str | None) -> dict[str, dict[str, Any]]:
    """The tiles table at snapshot ``tip`` as rows."""
    return table_rows(_existing_table(repo, tip))


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
    tiles: list[TileSource],
    opts: IndexOptions,
    root: SourceRoot,
    files: SourceFiles,
    report: Report,
    advance: Callable[[int], None],
) -> list[TileRecord]:
    """Probe the tiles' files and validate them; failures go into ``report``."""
    t0 = time.perf_counter()
    c0 = time.process_time()
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
    c1 = time.process_time()
    report.timings["cpu_probe"] = c1 - c0
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
    report.timings["cpu_validate"] = time.process_time() - c1
    return records


def index_unit(
    zone: int,
    year: int,
    tiles: pa.Table | Sequence[TileSource],
    opts: IndexOptions,
    root: SourceRoot,
    files: SourceFiles,
    progress: ProgressStart = no_progress,
) -> Report:
    """Index one (zone, year) unit and commit it if anything changed.

    ``tiles`` is the unit's inventory (a table of
    :data:`~tessera_vz.indexer.inventory.INVENTORY_SCHEMA`, or tile sources).
    """
    report = Report()
    cpu_start = time.process_time()
    listed = tiles if isinstance(tiles, pa.Table) else inventory_table(tiles)
    t0 = time.perf_counter()
    s3, source_s3 = opts.s3_options, source_s3_options(opts)
    repo = open_repo(opts.out, zone, root, create=False, s3_options=s3, source_s3_options=source_s3)
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
    to_probe = tile_sources(diff.probe)
    advance = progress(f"headers utm{zone:02d} {year}", 2 * len(to_probe))
    log.info(
        "zone %d year %d: %d tiles listed, %d unchanged in the inventory, reading %d headers",
        zone, year, listed.num_rows, diff.skipped, 2 * len(to_probe),
    )  # fmt: skip
    report.timings["diff"] = t1 - t0
    records = _probe(to_probe, opts, root, files, report, advance)

    prev_rows = table_rows(old, {r.name for r in records})
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
        repo = open_repo(
            opts.out, zone, root, create=True, s3_options=s3, source_s3_options=source_s3
        )
    rows = table_rows(old)
    rows.update(updates)
    for n in diff.removed:
        del rows[n]
    drop = diff.removed + [r.name for r in changed if r.name in prev_rows]
    advance_w = progress(f"commit  utm{zone:02d} {year}", 1)
    commit = write_unit(
        repo, zone, year, changed, drop, rows, root, opts.chunk_budget, report.timings,
        batch_tiles=opts.batch_tiles, expected_tip=tip,
        locked=lock_path(opts.out, zone) is not None,
    )  # fmt: skip
    advance_w(1)
    write_table_blocks(opts.out, zone, year, commit.snapshot, rows, s3)  # cold points' table
    report.timings["cpu_unit"] = time.process_time() - cpu_start
    report.commits.append(commit)
    report.indexed += len(changed)
    report.removed += len(diff.removed)
    return report


def run_unit(
    opts: IndexOptions,
    zone: int,
    year: int,
    tiles: pa.Table | Sequence[TileSource],
    root: SourceRoot | None = None,
    files: SourceFiles | None = None,
    progress: ProgressStart = no_progress,
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
    with repo_lock(opts.out, zone), no_cycle_collection():
        try:
            return index_unit(zone, year, tiles, opts, root, files, progress)
        except UnitConflictError as exc:
            # Nothing of this unit was published; the other run's result stands.
            log.error("%s", exc)
            return Report(failed=[Failure(year, None, None, str(exc))])
