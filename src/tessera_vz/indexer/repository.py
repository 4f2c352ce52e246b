"""A zone's repository: opened or created with its containers, its tags, ``main``.

One Icechunk repository per UTM zone. Every source root it references is a
virtual chunk container recorded in its config; a writer opens it with a
small cache and stronger metadata compression than Icechunk's defaults.
Each published year gets an immutable tag ``{year}-v{n}``, and ``main``
holds only root attributes describing the repository, derived from the tags
and branches so that concurrent runs converge.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable
from typing import Any, Literal, overload

import icechunk as ic
import zarr
from zarr.core.common import JSON

from tessera_vz.core.dataset import Dataset
from tessera_vz.core.layout import branch_name, parse_tag, repo_name, tag_name
from tessera_vz.core.repos import container_for, read_config, storage_for
from tessera_vz.indexer.migration import writing_layout, year_layout
from tessera_vz.indexer.roots import SourceRoot

log = logging.getLogger(__name__)

#: zstd level of the snapshots, manifests and transaction logs a run writes
#: (Icechunk's default is 3, kept). Level 9 made a 7,000-tile snapshot ~7 %
#: smaller, but zstd at 9 was ~14 % of a unit's CPU: a commit compresses a
#: few manifests per tile (~650 chunk references a tile in the world), where the
#: higher level gains ~0.4 % and costs ~0.7 ms a tile (868-tile unit: 0.76 s
#: of zstd at 9, 0.16 s at 3). The snapshot is ~12 % larger at 3 (~50 bytes a
#: tile), the whole repository ~0.8 %.
METADATA_COMPRESSION_LEVEL = 3

#: Chunks up to this size are stored inline in their array's manifest instead
#: of as an object of their own (Icechunk's default is 512 bytes). A tile's
#: ``y`` and ``x`` chunks, blosc-compressed to ~300-600 bytes
#: (:data:`~tessera_vz.indexer.documents.COORDINATE_CODEC`), were two objects
#: and ~16 kB a tile; the manifest Icechunk writes for each array anyway now
#: holds them. Small columns of the tiles table go inline too.
INLINE_CHUNK_BYTES = 4096

#: Array manifests written at once by a commit (Icechunk's default is 1).
#: A run's commit writes a few small manifests per tile, one after another
#: by default; in parallel it is storage-bound instead of latency-bound.
COMMIT_CONCURRENCY = 64


#: Snapshot nodes a writer caches before it knows the unit it writes.
WRITE_SNAPSHOT_NODES = 100_000

#: Nodes a tile adds to a year's snapshot: its group and five arrays
#: (embeddings, scales, y, x, spatial_ref). Decoded, with their documents,
#: they take ~6 kB a tile (a 20,000-tile snapshot: 117 MB).
NODES_PER_TILE = 6


def _write_config(cfg: ic.RepositoryConfig | None) -> ic.RepositoryConfig:
    """The persisted config plus a small cache and stronger compression for writing.

    Icechunk's default cache keeps up to 15 M chunk references; an index run
    only writes references, so caching them costs ~0.3 GB per 3,000 tiles.
    Metadata files are compressed at :data:`METADATA_COMPRESSION_LEVEL`
    (a writer's setting: readers decompress any level).
    """
    config: ic.RepositoryConfig = read_config(cfg)
    config.caching = ic.CachingConfig(
        num_chunk_refs=50_000, num_snapshot_nodes=WRITE_SNAPSHOT_NODES
    )
    config.compression = ic.CompressionConfig(level=METADATA_COMPRESSION_LEVEL)
    config.inline_chunk_threshold_bytes = INLINE_CHUNK_BYTES
    if config.manifest is not None:
        config.manifest.max_concurrent_manifest_fetches_during_commit = COMMIT_CONCURRENCY
        # An explicit empty rule set: one manifest per array, as Icechunk's
        # default (None) also gives, but that default is a rule matching every
        # path, whose regex a commit compiled again for every array (~0.25 ms
        # a tile; the same manifests are written).
        config.manifest.splitting = ic.ManifestSplittingConfig(())
    return config


@overload
def open_repo(
    out: str,
    zone: int,
    root: SourceRoot,
    *,
    create: Literal[True] = True,
    s3_options: dict[str, Any] | None = None,
    source_s3_options: dict[str, Any] | None = None,
) -> ic.Repository: ...


@overload
def open_repo(
    out: str,
    zone: int,
    root: SourceRoot,
    *,
    create: bool,
    s3_options: dict[str, Any] | None = None,
    source_s3_options: dict[str, Any] | None = None,
) -> ic.Repository | None: ...


def open_repo(
    out: str,
    zone: int,
    root: SourceRoot,
    *,
    create: bool = True,
    s3_options: dict[str, Any] | None = None,
    source_s3_options: dict[str, Any] | None = None,
) -> ic.Repository | None:
    """Open (or create) a zone's repository, registering ``root`` as a container.

    ``s3_options`` reach the repository's own storage; ``source_s3_options``
    (default: the same) describe the source's S3 service for the container,
    since the index and the tiles may live on different services. Returns
    ``None`` when the repository does not exist and ``create`` is false.
    """
    location = out.rstrip("/") + "/" + repo_name(zone)
    storage = storage_for(location, s3_options=s3_options)
    container = container_for(
        root.url, s3_options=s3_options if source_s3_options is None else source_s3_options
    )
    if ic.Repository.exists(storage):
        cfg = ic.Repository.fetch_config(storage) or ic.RepositoryConfig.default()
        if root.url not in (cfg.virtual_chunk_containers or {}):
            cfg = read_config(cfg)
            cfg.set_virtual_chunk_container(container)
            ic.Repository.open(storage, config=cfg).save_config()
    else:
        if not create:
            return None
        cfg = read_config()
        cfg.set_virtual_chunk_container(container)
        ic.Repository.create(storage, config=cfg).save_config()
    return ic.Repository.open(storage, config=_write_config(ic.Repository.fetch_config(storage)))


def unit_repo(repo: ic.Repository, tiles: int) -> ic.Repository:
    """The same repository opened anew, caching one snapshot of a year of ``tiles`` tiles.

    Icechunk weighs a cached snapshot by its nodes and never caches one
    heavier than the whole cache; a session then decodes the snapshot again
    at every node lookup (with the fixed 100,000 nodes, a 20,000-tile unit
    stalled for minutes in its 18th batch, 500 threads decoding). A larger
    fixed cache keeps every batch's snapshot instead (~6 kB a tile each), so
    the cache holds the unit's snapshot and a quarter more. Opened anew:
    ``Repository.reopen`` keeps the old caches (and compression level),
    whatever config it is given.
    """
    config = repo.config
    nodes = max(WRITE_SNAPSHOT_NODES, int(1.25 * NODES_PER_TILE * tiles) + 1000)
    config.caching = ic.CachingConfig(num_chunk_refs=50_000, num_snapshot_nodes=nodes)
    return ic.Repository.open(repo.storage, config=config)


#: Memory garbage collection may hold: snapshots decoded at once (Icechunk's
#: default, 50, is ~2 GB of 30,000-tile snapshots) and manifests fetched.
GC_SNAPSHOTS_IN_MEMORY = 2
GC_MANIFEST_BYTES = 64 << 20


def collect_amended(repo: ic.Repository, zone: int, before: dt.datetime | None = None) -> int:
    """Delete the unreachable snapshots and transaction logs older than ``before``; bytes freed.

    A unit written in several batches without the zone's lock amends its
    scratch commit once per batch, and each amend leaves the replaced
    snapshot and its transaction log behind, unreachable: the log of an
    amend holds every change since the year's previous tip, so a 7,000-tile
    unit in batches of 1,000 left about three times the published metadata
    as garbage (~6 kB a tile). Under the lock, a unit's batches are folded by
    the same collection (:func:`~tessera_vz.indexer.transaction.fold_batches`).
    Icechunk's garbage collection removes what no branch or tag reaches.

    Only safe while no other writer can have objects in flight in this
    repository, so the caller holds the zone's lock
    (:mod:`~tessera_vz.indexer.locks`): every object older than ``before``
    (default: now) is then either reachable or garbage. It reads every
    reachable snapshot and manifest of the zone, with memory capped by
    :data:`GC_SNAPSHOTS_IN_MEMORY` and :data:`GC_MANIFEST_BYTES`.
    """
    t = time.perf_counter()
    summary = repo.garbage_collect(
        before or dt.datetime.now(dt.UTC),
        max_snapshots_in_memory=GC_SNAPSHOTS_IN_MEMORY,
        max_compressed_manifest_mem_bytes=GC_MANIFEST_BYTES,
        max_decoded_manifest_mem_bytes=2 * GC_MANIFEST_BYTES,
    )
    log.info(
        "zone %d: removed %d unreachable snapshots, %d transaction logs (%d bytes) in %.1f s",
        zone, summary.snapshots_deleted, summary.transaction_logs_deleted,
        summary.bytes_deleted, time.perf_counter() - t,
    )  # fmt: skip
    return int(summary.bytes_deleted)


def next_tag(repo: ic.Repository, year: int) -> str:
    """The tag the year's next publication gets: ``{year}-v{n}``, one past the highest."""
    versions = [v for t in repo.list_tags() if (p := parse_tag(t)) and (v := p[1]) and p[0] == year]
    return tag_name(year, max(versions, default=0) + 1)


def _str_list(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def update_main(
    repo: ic.Repository, zone: int, sources: Iterable[str], dataset: Dataset | None = None
) -> None:
    """Describe the repo on ``main``: zone, layout version, each year's latest tag, dataset.

    ``tessera:dataset`` (version, variant, path; absent when unknown) and
    ``tessera:source`` (the root the index now reads) say what the index holds,
    so a run of another dataset or tree is refused (:mod:`.datasets`);
    ``tessera:sources`` keeps every root ever read (each is a container).

    Derived from the tags and branches alone, so concurrent runs converge: on
    a conflict the description is simply recomputed and committed again. The
    layout version is the oldest any year branch is in (a year not indexed
    since a layout change keeps its older layout until its next run).
    """
    sources = list(sources)
    for _attempt in range(8):
        latest: dict[str, str] = {}
        for t in repo.list_tags():
            p = parse_tag(t)
            if p and (str(p[0]) not in latest or parse_tag(latest[str(p[0])])[1] < p[1]):  # type: ignore[index]
                latest[str(p[0])] = t
        branches = set(repo.list_branches())
        layouts = [
            year_layout(repo, repo.lookup_branch(branch_name(int(y))))
            for y in latest
            if branch_name(int(y)) in branches
        ]
        session = repo.writable_session("main")
        group: zarr.Group = zarr.open_group(session.store, mode="a", zarr_format=3)
        attrs: dict[str, JSON] = {
            "tessera:zone": zone,
            **({"tessera:dataset": dataset.document()} if dataset is not None else {}),  # type: ignore[dict-item]
            "tessera:source": sources[-1],
            "tessera:layout_version": min(layouts, default=writing_layout()),
            "tessera:years": dict(sorted(latest.items())),
            "tessera:sources": sorted(
                set(sources) | set(_str_list(group.attrs.get("tessera:sources")))
            ),
        }
        if dict(group.attrs) == attrs:
            return
        group.attrs.put(attrs)
        try:
            session.commit("describe repository")
            return
        except ic.ConflictError:
            log.info("main moved while describing zone %d; retrying", zone)
    raise RuntimeError(f"could not update main of zone {zone} after repeated conflicts")
