"""Write one (zone, year) unit into its repository: groups, refs, table, commit, tag.

Array metadata documents are written straight through the Icechunk store
(``create_array`` costs ~6 ms a call; a ``set`` of the document ~0.2 ms), and
each tile's chunk references go in with one bulk ``set_virtual_refs_arr``
call per array. Coordinates (``y``, ``x``) are small real arrays; the CF grid
mapping ``spatial_ref`` is a 0-d array with no chunk (its value is its fill
value), so it costs a node in the snapshot and no object.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import icechunk as ic
import numpy as np
import zarr
from pyproj import CRS
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.common import JSON

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.geometry import affine, pixel_centres
from tessera_vz.core.layout import (
    EMBEDDINGS,
    GRID_MAPPING,
    LAYOUT_VERSION,
    SCALES,
    WORK_PREFIX,
    branch_name,
    parse_tag,
    repo_name,
    tag_name,
    work_branch_name,
)
from tessera_vz.core.npy import NpyHeader
from tessera_vz.core.repos import container_for, container_name, read_config, storage_for
from tessera_vz.core.table import COLUMNS, table_dataset
from tessera_vz.indexer.memory import release
from tessera_vz.indexer.parser import array_metadata, row_chunk_ranges, row_chunk_shape
from tessera_vz.indexer.record import TileRecord
from tessera_vz.indexer.report import Commit
from tessera_vz.indexer.roots import SourceRoot, checksum_value

log = logging.getLogger(__name__)

_BATCH = 256
_Y_ATTRS = {
    "standard_name": "projection_y_coordinate",
    "units": "m",
    "axis": "Y",
    "long_name": "northing of pixel centre",
}
_X_ATTRS = {
    "standard_name": "projection_x_coordinate",
    "units": "m",
    "axis": "X",
    "long_name": "easting of pixel centre",
}
_EMB_ATTRS = {
    "long_name": "quantised TESSERA embedding",
    "description": "value = embeddings * scales where the scale is valid "
    "(finite, > 0 and < 1), else no data",
}
_SCALES_ATTRS = {"long_name": "dequantisation scale of each pixel"}
#: On a data variable: its CF grid mapping, and (xarray's convention) that the
#: 0-d grid-mapping variable is a coordinate, so ``xr.open_zarr`` puts it in
#: ``ds.coords`` where rioxarray and odc-geo look for it.
_GRID_MAPPED = {"grid_mapping": GRID_MAPPING, "coordinates": GRID_MAPPING}
_ATTRS: dict[str, dict[str, Any]] = {
    "emb": _EMB_ATTRS,
    "scales": _SCALES_ATTRS,
    "y": _Y_ATTRS,
    "x": _X_ATTRS,
    "band": {"long_name": "embedding band"},
    "emb2": {**_EMB_ATTRS, **_GRID_MAPPED},
    "scales2": {**_SCALES_ATTRS, **_GRID_MAPPED},
    "crs": {},
}
#: Nodes of older layouts that the current one no longer has (removed on upgrade).
_OBSOLETE_NODES = ("band",)
#: zstd level of the snapshots, manifests and transaction logs a run writes
#: (Icechunk's default is 3). Every cold reader fetches a year's snapshot
#: whole; at 9 a 7,000-tile one is ~7 % smaller (3.07 -> 2.87 MB) and takes
#: ~0.4 s more to compress (each batch of a run writes one); levels above 9
#: gain little until 19, which takes ~13 s.
METADATA_COMPRESSION_LEVEL = 9


def _buffer(data: bytes) -> Buffer:
    return default_buffer_prototype().buffer.from_bytes(data)


@lru_cache(maxsize=64)
def _template(descr: str, ndim: int, dims: tuple[str, ...], attrs_key: str) -> dict[str, Any]:
    """Metadata document of an array kind, built once through zarr's own classes.

    Building ``ArrayV3Metadata`` costs ~1.5 ms and tiles differ only in shape,
    so the document is made once per kind and only shapes are substituted.
    """
    header = NpyHeader((1, 0), np.dtype(descr), False, (1,) * ndim, 0)
    meta = array_metadata(
        header, dimension_names=dims, attributes=_ATTRS[attrs_key], budget=1 << 30
    )
    doc: dict[str, Any] = json.loads(
        meta.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
    )
    return doc


def _array_doc(
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    descr: str,
    dims: tuple[str, ...],
    kind: str,
    attributes: dict[str, Any] | None = None,
) -> bytes:
    doc = dict(_template(descr, len(shape), dims, kind))
    doc["shape"] = list(shape)
    doc["chunk_grid"] = {"name": "regular", "configuration": {"chunk_shape": list(chunks)}}
    if attributes is not None:
        doc["attributes"] = attributes
    return json.dumps(doc).encode()


def _group_doc(attrs: dict[str, Any]) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}).encode()


@lru_cache(maxsize=128)
def crs_attributes(epsg: int) -> dict[str, Any]:
    """CF grid-mapping attributes of an EPSG code, as rioxarray and GDAL write them.

    The WKT (GDAL's WKT1, which names the EPSG code) goes under both names
    readers look for: ``crs_wkt`` (CF, odc-geo) and ``spatial_ref`` (GDAL,
    rioxarray); the CF projection parameters follow for CF readers without a
    WKT parser. WKT1 rather than WKT2 because it is half as long: repeated in
    every group it is nearly free once the snapshot is compressed, but not in
    the decompressed snapshot a reader holds in memory. Building the
    attributes costs milliseconds; a zone has two EPSG codes: once per code.
    """
    crs = CRS.from_epsg(int(epsg))
    wkt = crs.to_wkt("WKT1_GDAL")
    return {**crs.to_cf(), "crs_wkt": wkt, "spatial_ref": wkt}


def geo_transform(left: float, top: float) -> str:
    """GDAL ``GeoTransform`` (``c a b f d e``) of a north-up 10 m grid at (left, top)."""
    a, b, c, d, e, f = affine(left, top)
    return " ".join(str(float(v)) for v in (c, a, b, f, d, e))


@dataclass(frozen=True)
class TileGroup:
    """Everything a tile group's metadata is made of.

    Built from a run's :class:`TileRecord` (headers just probed) or from a row
    of the year's tiles table, which holds the same facts: so an existing
    index can be moved to a new layout without reading a single header.
    """

    name: str
    year: int
    lon: float
    lat: float
    epsg: int
    left: float
    top: float
    emb_shape: tuple[int, ...]
    emb_chunks: tuple[int, ...]
    scales_shape: tuple[int, ...]
    scales_chunks: tuple[int, ...]
    scales_descr: str

    @property
    def height(self) -> int:
        return self.emb_shape[0]

    @property
    def width(self) -> int:
        return self.emb_shape[1]


def group_of_record(r: TileRecord, budget: int) -> TileGroup:
    """The tile group of a freshly probed record."""
    return TileGroup(
        name=r.name,
        year=r.source.year,
        lon=r.source.lon,
        lat=r.source.lat,
        epsg=r.epsg,
        left=r.left,
        top=r.top,
        emb_shape=r.emb.shape,
        emb_chunks=row_chunk_shape(r.emb, budget),
        scales_shape=r.scales.shape,
        scales_chunks=row_chunk_shape(r.scales, budget),
        scales_descr=r.scales.dtype.str,
    )


def group_of_row(name: str, year: int, row: dict[str, Any]) -> TileGroup:
    """The tile group a tiles-table row describes (chunking as it was indexed)."""
    h, w, b = int(row["height"]), int(row["width"]), int(row["bands"])
    scales_shape = (h, w) if int(row["scales_ndim"]) == 2 else (h, w, b)
    return TileGroup(
        name=name,
        year=int(year),
        lon=float(row["lon"]),
        lat=float(row["lat"]),
        epsg=int(row["epsg"]),
        left=float(row["left"]),
        top=float(row["top"]),
        emb_shape=(h, w, b),
        emb_chunks=(int(row["emb_chunk_rows"]), max(w, 1), max(b, 1)),
        scales_shape=scales_shape,
        scales_chunks=(int(row["scales_chunk_rows"]), *(max(n, 1) for n in scales_shape[1:])),
        scales_descr=str(row["scales_descr"]),
    )


def tile_attributes(g: TileGroup) -> dict[str, Any]:
    """Group attributes of a tile: geospatial conventions and which tile it is.

    The source files' URLs and header facts (offsets, sizes, checksums) are
    in the year's tiles table only: every group's attributes are stored in
    the snapshot a reader fetches whole, where per-tile text compresses
    poorly (the two URLs alone were ~6 % of a 7,000-tile snapshot).
    """
    return {
        "proj:code": f"EPSG:{g.epsg}",
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": affine(g.left, g.top),
        "spatial:shape": [g.height, g.width],
        "tessera:tile": g.name,
        "tessera:lon": g.lon,
        "tessera:lat": g.lat,
        "tessera:year": g.year,
    }


def _documents(g: TileGroup, coordinates: bool = True) -> list[tuple[str, bytes]]:
    """Every metadata document of a tile group (``coordinates``: with ``y`` and ``x``)."""
    n = g.name
    sdims = ("y", "x") if len(g.scales_shape) == 2 else ("y", "x", "band")
    crs = {**crs_attributes(g.epsg), "GeoTransform": geo_transform(g.left, g.top)}
    docs = [
        (f"{n}/zarr.json", _group_doc(tile_attributes(g))),
        (
            f"{n}/{EMBEDDINGS}/zarr.json",
            _array_doc(g.emb_shape, g.emb_chunks, "|i1", ("y", "x", "band"), "emb2"),
        ),
        (
            f"{n}/{SCALES}/zarr.json",
            _array_doc(g.scales_shape, g.scales_chunks, g.scales_descr, sdims, "scales2"),
        ),
        (f"{n}/{GRID_MAPPING}/zarr.json", _array_doc((), (), "<i4", (), "crs", crs)),
    ]
    if coordinates:
        h, w = g.height, g.width
        docs.append((f"{n}/y/zarr.json", _array_doc((h,), (h,), "<f8", ("y",), "y")))
        docs.append((f"{n}/x/zarr.json", _array_doc((w,), (w,), "<f8", ("x",), "x")))
    return docs


def _header_facts(h: NpyHeader, size: int, checksum: str, url: str) -> dict[str, Any]:
    return {
        "url": url,
        "npy_version": f"{h.version[0]}.{h.version[1]}",
        "descr": h.dtype.str,
        "shape": list(h.shape),
        "offset": h.data_offset,
        "size": size,
        "checksum": checksum,
    }


def _documents_v1(r: TileRecord, root: SourceRoot, budget: int) -> list[tuple[str, bytes]]:
    """Layout 1's documents, exactly as earlier releases wrote them.

    Kept so that tests can build an index of the previous layout and prove
    that a run upgrades it; an index run writes :data:`LAYOUT_VERSION`.
    """
    n = r.name
    sdims = ("y", "x") if len(r.scales.shape) == 2 else ("y", "x", "band")
    h, w, b = r.height, r.width, r.bands
    attrs = {
        "proj:code": f"EPSG:{r.epsg}",
        "spatial:dimensions": ["y", "x"],
        "spatial:transform": affine(r.left, r.top),
        "spatial:shape": [r.height, r.width],
        "tessera:tile": r.name,
        "tessera:lon": r.source.lon,
        "tessera:lat": r.source.lat,
        "tessera:year": r.source.year,
        "tessera:embeddings": _header_facts(
            r.emb, r.emb_size, r.emb_checksum, root.url_of(r.source.emb_path)
        ),
        "tessera:scales": _header_facts(
            r.scales, r.scales_size, r.scales_checksum, root.url_of(r.source.scales_path)
        ),
    }
    return [
        (f"{n}/zarr.json", _group_doc(attrs)),
        (
            f"{n}/{EMBEDDINGS}/zarr.json",
            _array_doc(
                r.emb.shape, row_chunk_shape(r.emb, budget), r.emb.dtype.str,
                ("y", "x", "band"), "emb",
            ),
        ),
        (
            f"{n}/{SCALES}/zarr.json",
            _array_doc(
                r.scales.shape, row_chunk_shape(r.scales, budget), r.scales.dtype.str,
                sdims, "scales",
            ),
        ),
        (f"{n}/y/zarr.json", _array_doc((h,), (h,), "<f8", ("y",), "y")),
        (f"{n}/x/zarr.json", _array_doc((w,), (w,), "<f8", ("x",), "x")),
        (f"{n}/band/zarr.json", _array_doc((b,), (b,), "<i2", ("band",), "band")),
    ]  # fmt: skip


def _coordinate_chunks(r: TileRecord, layout: int) -> list[tuple[str, bytes]]:
    y, x = pixel_centres(r.left, r.top, r.height, r.width)
    chunks = [
        (f"{r.name}/y/c/0", y.astype("<f8").tobytes()),
        (f"{r.name}/x/c/0", x.astype("<f8").tobytes()),
    ]
    if layout < 2:
        chunks.append((f"{r.name}/band/c/0", np.arange(r.bands, dtype="<i2").tobytes()))
    return chunks


async def _write_groups(
    store: Any,
    records: Sequence[TileRecord],
    root: SourceRoot,
    budget: int,
    drop: Iterable[str],
    layout: int,
) -> None:
    for name in drop:
        await store.delete_dir(name)
    for start in range(0, len(records), _BATCH):
        batch = records[start : start + _BATCH]
        if layout < 2:
            docs = [d for r in batch for d in _documents_v1(r, root, budget)]
        else:
            docs = [d for r in batch for d in _documents(group_of_record(r, budget))]
        await asyncio.gather(*(store.set(k, _buffer(v)) for k, v in docs))
        chunks = [c for r in batch for c in _coordinate_chunks(r, layout)]
        await asyncio.gather(*(store.set(k, _buffer(v)) for k, v in chunks))


async def _upgrade_groups(store: Any, groups: Sequence[TileGroup]) -> None:
    """Rewrite existing tile groups' metadata in the current layout, keeping their data.

    Icechunk keeps an array's chunk references when its metadata document is
    replaced with the same shape and chunks, so the virtual references stay
    and no manifest is rewritten; coordinates ``y`` and ``x`` are unchanged
    since layout 1 and are left alone. Nodes the layout dropped are deleted.
    """
    for start in range(0, len(groups), _BATCH):
        batch = groups[start : start + _BATCH]
        docs = [d for g in batch for d in _documents(g, coordinates=False)]
        await asyncio.gather(*(store.set(k, _buffer(v)) for k, v in docs))
        # Deleting a node that is not there is a no-op.
        await asyncio.gather(
            *(store.delete_dir(f"{g.name}/{node}") for g in batch for node in _OBSOLETE_NODES)
        )


def _set_refs(store: Any, r: TileRecord, root: SourceRoot, budget: int) -> None:
    cname = container_name(root.url)
    for array, header, path, checksum in (
        (EMBEDDINGS, r.emb, r.source.emb_path, r.emb_checksum),
        (SCALES, r.scales, r.source.scales_path, r.scales_checksum),
    ):
        grid, offsets, lengths = row_chunk_ranges(header, budget)
        failed = store.set_virtual_refs_arr(
            f"{r.name}/{array}",
            grid,
            [f"vcc://{cname}/{path}"] * len(offsets),
            offsets,
            lengths,
            validate_containers=True,
            checksum=checksum_value(checksum),
        )
        if failed:
            raise RuntimeError(f"icechunk refused {len(failed)} references of {r.name}/{array}")


def record_row(r: TileRecord, root: SourceRoot) -> dict[str, Any]:
    """The tiles-table row of a record."""
    return {
        "lon": r.source.lon,
        "lat": r.source.lat,
        "zone": r.zone,
        "epsg": r.epsg,
        "left": r.left,
        "top": r.top,
        "height": r.height,
        "width": r.width,
        "bands": r.bands,
        "emb_path": r.source.emb_path,
        "scales_path": r.source.scales_path,
        "emb_offset": r.emb.data_offset,
        "scales_offset": r.scales.data_offset,
        "emb_size": r.emb_size,
        "scales_size": r.scales_size,
        "emb_checksum": r.emb_checksum,
        "scales_checksum": r.scales_checksum,
        "emb_chunk_rows": r.emb_chunk_rows,
        "scales_chunk_rows": r.scales_chunk_rows,
        "scales_descr": r.scales.dtype.str,
        "scales_ndim": len(r.scales.shape),
        "source": root.url,
        "emb_listed": r.source.emb_listed,
        "scales_listed": r.source.scales_listed,
    }


def _write_config(cfg: Any) -> Any:
    """The persisted config plus a small cache and stronger compression for writing.

    Icechunk's default cache keeps up to 15 M chunk references; an index run
    only writes references, so caching them costs ~0.3 GB per 3,000 tiles.
    Metadata files are compressed at :data:`METADATA_COMPRESSION_LEVEL`
    (a writer's setting: readers decompress any level).
    """
    cfg = read_config(cfg)
    cfg.caching = ic.CachingConfig(num_chunk_refs=50_000, num_snapshot_nodes=100_000)
    cfg.compression = ic.CompressionConfig(level=METADATA_COMPRESSION_LEVEL)
    return cfg


def open_repo(
    out: str,
    zone: int,
    root: SourceRoot,
    *,
    create: bool = True,
    s3_options: dict[str, Any] | None = None,
    source_s3_options: dict[str, Any] | None = None,
) -> Any | None:
    """Open (or create) a zone's repository, registering ``root`` as a container.

    ``s3_options`` reach the repository's own storage; ``source_s3_options``
    (default: the same) describe the source's S3 service for the container,
    since the index and the tiles may live on different services.
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


def _next_tag(repo: Any, year: int) -> str:
    versions = [v for t in repo.list_tags() if (p := parse_tag(t)) and (v := p[1]) and p[0] == year]
    return tag_name(year, max(versions, default=0) + 1)


class UnitConflictError(RuntimeError):
    """Another run published the same (zone, year) while this one was writing."""


#: Default age (seconds) after which a scratch branch is taken for a dead run's.
SCRATCH_MAX_AGE = 3600.0


def scratch_age(repo: Any, branch: str, now: float | None = None) -> float | None:
    """Seconds since a scratch branch was created, or ``None`` if it is not one.

    The creation time is part of the name (``tessera-work-{year}-{epoch}-{hex}``);
    branches named before that (``…-{hex}``) are aged by their tip snapshot,
    which is never younger than the branch.
    """
    if not branch.startswith(WORK_PREFIX):
        return None
    now = time.time() if now is None else now
    parts = branch[len(WORK_PREFIX) :].split("-")
    if len(parts) == 3 and parts[1].isdigit():
        return now - int(parts[1])
    written = repo.lookup_snapshot(repo.lookup_branch(branch)).written_at
    return now - float(written.timestamp())


def clean_scratch_branches(repo: Any, year: int, max_age: float = SCRATCH_MAX_AGE) -> list[str]:
    """Delete the year's scratch branches older than ``max_age`` seconds.

    A run killed half-way leaves its scratch branch behind (the year branch
    never saw it). Deleting it is safe once its run is surely dead, which is
    not knowable across machines; age is the proxy, so ``max_age`` must exceed
    the longest a live run takes to write one unit (default one hour). Only
    branches of ``year`` are touched: another year may be written right now.
    """
    prefix = f"{WORK_PREFIX}{int(year)}-"
    deleted = []
    now = time.time()
    for branch in sorted(repo.list_branches()):
        if not branch.startswith(prefix):
            continue
        age = scratch_age(repo, branch, now)
        if age is None or age < max_age:
            continue
        try:
            repo.delete_branch(branch)
        except Exception as exc:  # a concurrent run may have deleted it first
            log.warning("could not delete stale scratch branch %s: %s", branch, exc)
            continue
        log.info("deleted stale scratch branch %s (%.0f s old)", branch, age)
        deleted.append(branch)
    return deleted


def _write_batch(
    repo: Any,
    work: str,
    first: bool,
    batch: Sequence[TileRecord],
    drop: Sequence[str],
    rows: dict[str, dict[str, Any]] | None,
    root_attrs: dict[str, Any],
    root: SourceRoot,
    budget: int,
    message: str,
    metadata: dict[str, Any],
    timings: dict[str, float],
    layout: int,
    upgrade: Sequence[TileGroup] = (),
) -> str:
    session = repo.writable_session(work)
    store = session.store
    t0 = time.perf_counter()

    async def write() -> float:
        if first:
            await store.set("zarr.json", _buffer(_group_doc(root_attrs)))
        await _write_groups(store, batch, root, budget, drop, layout)
        t = time.perf_counter()
        await _upgrade_groups(store, upgrade)
        return time.perf_counter() - t

    upgrading = asyncio.run(write())
    t1 = time.perf_counter()
    for r in batch:
        _set_refs(store, r, root, budget)
    t2 = time.perf_counter()
    if rows is not None:
        names = sorted(rows)
        columns = {c: [rows[n][c] for n in names] for c in COLUMNS}
        table = table_dataset(names, columns, dict(root_attrs))
        table.to_zarr(store, group="tiles", mode="w", consolidated=False, zarr_format=3)
    t3 = time.perf_counter()
    log.info("committing to scratch branch %s: %s", work, message)
    if first:
        snapshot = session.commit(message, metadata=metadata)
    else:
        snapshot = session.amend(message, metadata=metadata)
    t4 = time.perf_counter()
    if upgrade:
        timings["upgrade_layout"] = timings.get("upgrade_layout", 0.0) + upgrading
    for key, value in (
        ("write_metadata", t1 - t0 - upgrading),
        ("write_refs", t2 - t1),
        ("write_table", t3 - t2),
        ("commit", t4 - t3),
    ):
        timings[key] = timings.get(key, 0.0) + value
    return str(snapshot)


def write_unit(
    repo: Any,
    zone: int,
    year: int,
    records: Sequence[TileRecord],
    drop: Sequence[str],
    rows: dict[str, dict[str, Any]],
    root: SourceRoot,
    budget: int,
    timings: dict[str, float],
    batch_tiles: int = 1000,
    expected_tip: str | Literal["lookup"] | None = "lookup",
) -> Commit:
    """Write new/changed ``records``, remove ``drop``, store ``rows`` as the table.

    ``rows`` is the complete table after this run (kept and new rows);
    ``drop`` lists groups to delete first (removed and changed tiles).

    Records are written in batches of ``batch_tiles`` to a scratch branch, each
    batch amending the previous one, so memory stays bounded by a batch and
    the result is one snapshot whose parent is the year's previous tip. Only
    then does the year branch move to it (conditionally: if another run moved
    it meanwhile, nothing is published and :class:`UnitConflictError` says so).

    ``expected_tip`` is the year-branch snapshot ``rows`` were computed from
    (``None``: the branch did not exist); the branch moves only if it still
    points there. The default looks it up now, which is right only when
    ``rows`` were read just before.

    When the year was written in an older layout (see
    :data:`~tessera_vz.core.layout.LAYOUT_VERSION`), the metadata of every
    other group in ``rows`` is rewritten in the current one from its table
    row, in the same commit: no header is read, no reference rewritten.
    """
    branch = branch_name(year)
    if expected_tip == "lookup":
        exists = branch in repo.list_branches()
        tip = repo.lookup_branch(branch) if exists else None
    else:
        tip, exists = expected_tip, expected_tip is not None
    layout = LAYOUT_VERSION  # looked up per call: tests write older layouts through it
    previous = year_layout(repo, tip) if tip is not None else layout
    if previous > layout:
        raise ConfigurationError(
            f"zone {zone} year {year} was written in index layout {previous} by a newer "
            f"tessera-vz; this one writes layout {layout}. Upgrade tessera-vz to index it"
        )
    fresh = {r.name for r in records}
    upgrade = (
        [group_of_row(n, year, row) for n, row in sorted(rows.items()) if n not in fresh]
        if previous < layout
        else []
    )
    base = tip if tip is not None else repo.lookup_branch("main")
    # The creation time in the name lets a later run tell a stale branch of a
    # killed run from the live branch of a concurrent one.
    work = work_branch_name(year, f"{int(time.time())}-{uuid.uuid4().hex[:8]}")
    repo.create_branch(work, base)
    tag = _next_tag(repo, year)
    n_removed = len(set(drop) - fresh)
    message = f"index {len(records)} tiles, remove {n_removed} ({tag})"
    if upgrade:
        message += f"; layout {previous} -> {layout} for {len(upgrade)} more tiles"
    metadata = {
        "tessera:tag": tag,
        "tessera:tiles": len(rows),
        "tessera:zone": zone,
        "tessera:layout_version": layout,
    }
    root_attrs = {
        "tessera:zone": zone,
        "tessera:year": year,
        "tessera:layout_version": layout,
    }
    batches = [records[i : i + batch_tiles] for i in range(0, len(records), batch_tiles)] or [[]]
    try:
        snapshot = ""
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            log.info(
                "zone %d year %d: writing batch %d/%d (%d tiles) to scratch branch %s",
                zone, year, i + 1, len(batches), len(batch), work,
            )  # fmt: skip
            snapshot = _write_batch(
                repo,
                work,
                i == 0,
                batch,
                drop if i == 0 else [],
                rows if last else None,
                root_attrs,
                root,
                budget,
                message,
                metadata,
                timings,
                layout,
                upgrade if i == 0 else (),
            )
            release()
        log.info("zone %d year %d: publishing %s to branch %s", zone, year, snapshot, branch)
        try:
            if exists:
                repo.reset_branch(branch, snapshot, from_snapshot_id=tip)
            else:
                repo.create_branch(branch, snapshot)
        except Exception as exc:
            raise UnitConflictError(
                f"zone {zone} year {year}: another index run published this year while this "
                f"one was writing ({type(exc).__name__}); nothing of this run was published. "
                "Re-run the same command to index on top of the other run's result"
            ) from None
        repo.create_tag(tag, snapshot)
    finally:
        try:
            repo.delete_branch(work)
        except Exception:  # the scratch branch is harmless; never mask the real outcome
            log.warning("could not delete scratch branch %s", work)
    log.info("zone %d year %d: committed %s as %s (%d tiles)", zone, year, snapshot, tag, len(rows))
    return Commit(zone=zone, year=year, snapshot=snapshot, tag=tag)


def year_layout(repo: Any, snapshot: str) -> int:
    """Layout version of a year-branch snapshot, from its commit metadata.

    Read from the repository's snapshot list, not the snapshot itself, so it
    costs no fetch of a (multi-megabyte) snapshot. Commits made before the
    layout was recorded there are layout 1.
    """
    meta = repo.lookup_snapshot(snapshot).metadata or {}
    return int(meta.get("tessera:layout_version", 1))


def layout_outdated(repo: Any, tip: str | None) -> bool:
    """Whether a year branch at ``tip`` needs its groups moved to the current layout."""
    return repo is not None and tip is not None and year_layout(repo, tip) < LAYOUT_VERSION


def _str_list(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def update_main(repo: Any, zone: int, sources: Iterable[str]) -> None:
    """Describe the repo on ``main``: zone, layout version, each year's latest tag.

    Derived from the tags and branches alone, so concurrent runs converge: on
    a conflict the description is simply recomputed and committed again. The
    layout version is the oldest any year branch is in (a year not indexed
    since a layout change keeps its older layout until its next run).
    """
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
        group = zarr.open_group(session.store, mode="a", zarr_format=3)
        attrs: dict[str, JSON] = {
            "tessera:zone": zone,
            "tessera:layout_version": min(layouts, default=LAYOUT_VERSION),
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
