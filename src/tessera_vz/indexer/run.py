"""An index run: inventory -> (zone, year) units -> describe each zone -> zone list.

The inventory (a manifest, or a listing of a local or S3 tree) is cut into
(zone, year) units, each indexed on its own (:mod:`~tessera_vz.indexer.unit`):
one after another here, or on a Dask cluster
(:mod:`~tessera_vz.indexer.distributed`). Then every zone that changed is
described on its ``main`` branch, and the zone list a reader of a published
copy needs is rewritten.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from obstore.store import ObjectStore

from tessera_vz.core.dataset import Dataset
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.permissions import remember
from tessera_vz.core.progress import ProgressStart, no_progress
from tessera_vz.core.repos import quiet_icechunk
from tessera_vz.indexer.datasets import (
    manifest_datasets,
    recorded,
    row_filter,
    run_dataset,
    settle,
    zones_to_describe,
)
from tessera_vz.indexer.discover import find_manifest
from tessera_vz.indexer.distributed import run_units
from tessera_vz.indexer.inventory import TileSource, Units, split_units
from tessera_vz.indexer.listing import listing_inventory
from tessera_vz.indexer.locks import repo_lock
from tessera_vz.indexer.manifest import manifest_inventory
from tessera_vz.indexer.memory import limit_arenas
from tessera_vz.indexer.publish import write_zone_list
from tessera_vz.indexer.report import Failure, Report
from tessera_vz.indexer.repository import open_repo, update_main
from tessera_vz.indexer.roots import SourceRoot, object_store, source_root
from tessera_vz.indexer.run_options import (
    IndexOptions,
    source_files,
    source_options,
    source_s3_options,
)
from tessera_vz.indexer.summary import record_coverage
from tessera_vz.indexer.symlinks import skip_outside_links
from tessera_vz.indexer.sync_plan import plan_units
from tessera_vz.indexer.table_sidecar import write_missing_blocks
from tessera_vz.indexer.unit import run_unit

log = logging.getLogger(__name__)

__all__ = ["IndexOptions", "parse_int_list", "run_index", "units_of"]


def _inventory(
    opts: IndexOptions,
    root: SourceRoot,
    store: ObjectStore | None,
    manifest: pq.ParquetFile | None,
    dataset: Dataset | None,
) -> tuple[pa.Table, list[Failure]]:
    """The tiles the source holds: from the manifest (``dataset``'s rows), else by listing.

    ``store`` is the source's obstore store, ``None`` for an HTTP(S) source.
    """
    if manifest is not None:
        rows = row_filter(manifest, dataset)
        table, failures = manifest_inventory(
            manifest, root, years=opts.years, zones=opts.zones, rows=rows
        )
    elif store is None:  # HTTP(S): nothing to list (find_manifest said so already)
        raise ConfigurationError(f"source {root.url} cannot be listed; pass --manifest")
    else:
        table, failures = listing_inventory(store, years=opts.years, zones=opts.zones)
    if opts.follow_symlinks:
        return table, failures
    table, outside = skip_outside_links(table, root)
    return table, [*failures, *outside]


def run_index(opts: IndexOptions, progress: ProgressStart = no_progress) -> Report:
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
    manifest, where = find_manifest(opts, root)
    in_manifest = manifest_datasets(manifest) if manifest is not None else None
    dataset = run_dataset(opts.dataset, in_manifest, root, where)
    # One dataset, one source per index: refused here, before anything is written.
    identity = settle(opts.out, recorded(opts.out, opts.s3_options), dataset, root,
                      explicit=bool(opts.dataset), move_source=opts.move_source)  # fmt: skip
    # The user indexed this tree: reading it back from this index needs no permission
    # again on this machine (remembered here, never in the index, which travels).
    remember(opts.out, [root.url, *opts.allowed_sources])
    tiles, failures = _inventory(opts, root, store, manifest, identity.dataset)
    report = Report(failed=list(failures), dataset=identity.label, source=root.url)
    units = split_units(tiles)
    if not units and not failures:
        raise ConfigurationError(_nothing_selected(opts, where))
    del tiles
    t1 = time.perf_counter()
    report.timings["inventory"] = t1 - t0
    no_blocks: list[tuple[int, int]] = []
    if not opts.reprobe:
        units, no_blocks = _units_with_work(opts, root, units, report)
        report.timings["plan"] = time.perf_counter() - t1
    by_zone: dict[int, list[int]] = defaultdict(list)
    if units and (opts.scheduler or opts.workers):  # no cluster for nothing to do
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
    # Zones that changed, and any whose main does not record this dataset and source yet.
    stale = zones_to_describe(recorded(opts.out, opts.s3_options), identity)
    for zone in sorted(set(by_zone) | set(stale)):
        with repo_lock(opts.out, zone):
            repo = open_repo(
                opts.out, zone, root, s3_options=opts.s3_options,
                source_s3_options=source_s3_options(opts),
            )  # fmt: skip
            update_main(repo, zone, [root.url], identity.dataset)
            record_coverage(repo, zone)  # the viewer's counts and coverage without tables
    for zone, year in no_blocks:  # idle units of an index written before the table blocks
        with repo_lock(opts.out, zone):
            repo = open_repo(
                opts.out, zone, root, s3_options=opts.s3_options,
                source_s3_options=source_s3_options(opts),
            )  # fmt: skip
            write_missing_blocks(repo, opts.out, zone, year, opts.s3_options)
    # The zone list a reader of a published copy needs, in step with the repos.
    write_zone_list(opts.out, opts.s3_options, identity.dataset, root.url)
    report.timings["describe"] = time.perf_counter() - t2
    report.timings["total"] = time.perf_counter() - t0
    return report


def _units_with_work(
    opts: IndexOptions, root: SourceRoot, units: Units, report: Report
) -> tuple[Units, list[tuple[int, int]]]:
    """The units whose inventory shows something new, changed or removed (:mod:`.sync_plan`).

    The others are not run: their tiles count as skipped and unchanged. Also
    returns those idle units whose tip has no table blocks yet.
    """
    plans = plan_units(opts.out, units, root.url, s3_options=opts.s3_options)
    idle = {k for k, p in plans.items() if not p.run}
    for key in idle:
        report.skipped += plans[key].skipped
        report.unchanged += plans[key].skipped
    log.info("%d of %d units have nothing new, changed or removed", len(idle), len(plans))
    no_blocks = sorted(k for k in idle if not plans[k].blocks)
    return units.only(k for k in units if k not in idle), no_blocks


def _nothing_selected(opts: IndexOptions, where: str) -> str:
    """Why a run has nothing to do: the source holds no tile, or none the filters select."""
    where = f"the manifest {where}" if where.endswith(".parquet") else where
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


def units_of(tiles: Iterable[TileSource]) -> set[tuple[int, int]]:
    """The (zone, year) units a set of tiles falls into."""
    return {(t.zone, t.year) for t in tiles}
