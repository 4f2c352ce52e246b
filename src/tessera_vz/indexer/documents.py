"""The Zarr v3 documents of a tile group, written straight through the Icechunk store.

A tile group is a Zarr group (``grid_0.85_49.95``) of two virtual arrays
(``embeddings``, ``scales``), two small coordinate arrays (``y``, ``x``) and
the CF grid mapping ``spatial_ref``. Its array metadata documents are
rendered here as JSON and ``set`` through the store (``create_array`` costs
~6 ms a call; a ``set`` of the document ~0.2 ms). The coordinates are real
data, one blosc-compressed chunk each, small enough to live inline in the
array's manifest (:data:`COORDINATE_CODEC`); ``spatial_ref`` is a 0-d array with no chunk (its value
is its fill value), so it costs a node in the snapshot and no object. The
documents of layout 1 (before the grid mapping) are kept too, so tests can
build an index of the previous layout and prove that a run upgrades it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import icechunk as ic
import numpy as np
from numcodecs import Blosc
from pyproj import CRS
from zarr.core.buffer import Buffer, default_buffer_prototype

from tessera_vz.core.geometry import affine, pixel_centres
from tessera_vz.core.layout import EMBEDDINGS, GRID_MAPPING, SCALES
from tessera_vz.core.npy import NpyHeader
from tessera_vz.indexer.parser import array_metadata, row_chunk_shape
from tessera_vz.indexer.record import TileRecord
from tessera_vz.indexer.roots import SourceRoot

#: Tile groups whose documents are written in one ``gather`` (bounds the
#: writes in flight, not what a commit holds).
GROUPS_PER_GATHER = 256

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
    # Layout 2's coordinates: the same attributes, blosc-compressed chunks.
    "y2": _Y_ATTRS,
    "x2": _X_ATTRS,
}


#: Codec of the coordinate chunks (``y``, ``x``): blosc's byte shuffle lines up
#: the bytes of the evenly spaced float64 centres and zstd then packs a
#: ~8.9 kB chunk into ~300-600 bytes, small enough for Icechunk to store it
#: inline in the array's manifest instead of as an object of its own
#: (:data:`~tessera_vz.indexer.repository.INLINE_CHUNK_BYTES`). Blosc is a
#: codec of the Zarr v3 core specification, so every Zarr reader decodes it.
COORDINATE_CODEC: dict[str, Any] = {
    "name": "blosc",
    "configuration": {
        "cname": "zstd",
        "clevel": 5,
        "shuffle": "shuffle",
        "typesize": 8,
        "blocksize": 0,
    },
}
_BLOSC = Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE, blocksize=0, typesize=8)
#: Array kinds whose chunks are real data written by the indexer (compressed).
_COMPRESSED = frozenset({"y2", "x2"})


def _buffer(data: bytes) -> Buffer:
    """The bytes in the buffer type a zarr store takes."""
    return default_buffer_prototype().buffer.from_bytes(data)


async def set_all(store: ic.IcechunkStore, items: Iterable[tuple[str, bytes]]) -> None:
    """``set`` every (key, bytes) pair, documents or chunks, through the store at once."""
    await asyncio.gather(*(store.set(k, _buffer(v)) for k, v in items))


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
    if attrs_key in _COMPRESSED:
        doc["codecs"] = [*doc["codecs"], COORDINATE_CODEC]
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


def group_document(attrs: dict[str, Any]) -> bytes:
    """A Zarr v3 group's ``zarr.json`` with the given attributes."""
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


def tile_documents(g: TileGroup, coordinates: bool = True) -> list[tuple[str, bytes]]:
    """Every metadata document of a tile group (``coordinates``: with ``y`` and ``x``)."""
    n = g.name
    sdims = ("y", "x") if len(g.scales_shape) == 2 else ("y", "x", "band")
    crs = {**crs_attributes(g.epsg), "GeoTransform": geo_transform(g.left, g.top)}
    docs = [
        (f"{n}/zarr.json", group_document(tile_attributes(g))),
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
        docs.append((f"{n}/y/zarr.json", _array_doc((h,), (h,), "<f8", ("y",), "y2")))
        docs.append((f"{n}/x/zarr.json", _array_doc((w,), (w,), "<f8", ("x",), "x2")))
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


def _layout1_documents(r: TileRecord, root: SourceRoot, budget: int) -> list[tuple[str, bytes]]:
    """Layout 1's documents, exactly as earlier releases wrote them.

    Kept so that tests can build an index of the previous layout and prove
    that a run upgrades it; an index run writes
    :data:`~tessera_vz.core.layout.LAYOUT_VERSION`.
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
        (f"{n}/zarr.json", group_document(attrs)),
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
    """The one chunk of each coordinate array (``band`` too in layout 1): pixel centres."""
    y, x = pixel_centres(r.left, r.top, r.height, r.width)
    if layout < 2:
        return [
            (f"{r.name}/y/c/0", y.astype("<f8").tobytes()),
            (f"{r.name}/x/c/0", x.astype("<f8").tobytes()),
            (f"{r.name}/band/c/0", np.arange(r.bands, dtype="<i2").tobytes()),
        ]
    return [
        (f"{r.name}/y/c/0", _BLOSC.encode(y.astype("<f8").tobytes())),
        (f"{r.name}/x/c/0", _BLOSC.encode(x.astype("<f8").tobytes())),
    ]


async def write_tile_groups(
    store: ic.IcechunkStore,
    records: Sequence[TileRecord],
    root: SourceRoot,
    budget: int,
    drop: Iterable[str],
    layout: int,
) -> None:
    """Delete the groups in ``drop``, then write the records' groups in ``layout``.

    Metadata documents and coordinate chunks only; the virtual references
    of the data arrays are set afterwards (:mod:`~tessera_vz.indexer.references`).
    """
    for name in drop:
        await store.delete_dir(name)
    for start in range(0, len(records), GROUPS_PER_GATHER):
        batch = records[start : start + GROUPS_PER_GATHER]
        if layout < 2:
            docs = [d for r in batch for d in _layout1_documents(r, root, budget)]
        else:
            docs = [d for r in batch for d in tile_documents(group_of_record(r, budget))]
        await set_all(store, docs)
        await set_all(store, [c for r in batch for c in _coordinate_chunks(r, layout)])
