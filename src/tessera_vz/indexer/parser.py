"""A VirtualiZarr parser for ``.npy`` files.

A ``.npy`` file is one contiguous C-order array after a small header, so its
manifest is fully determined by the header: chunks are runs of whole rows
(:func:`~tessera_vz.core.layout.chunk_rows`), each one contiguous byte range
of the file. Modelled on VirtualiZarr's own FITS and netCDF3 parsers: settings
in ``__init__``, work in ``__call__``, the manifest built in one vectorised
step with ``ChunkManifest.from_arrays``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import obstore
from obspec_utils.registry import ObjectStoreRegistry
from virtualizarr.manifests import ChunkManifest, ManifestArray, ManifestGroup, ManifestStore
from virtualizarr.manifests.utils import create_v3_array_metadata
from zarr.core.metadata.v3 import ArrayV3Metadata

from tessera_vz.core.layout import CHUNK_BUDGET, chunk_rows
from tessera_vz.core.npy import PROBE_BYTES, NpyHeader, check_size, header_length, parse_header


def row_chunk_shape(header: NpyHeader, budget: int = CHUNK_BUDGET) -> tuple[int, ...]:
    """Chunk shape of whole-row chunks for an array described by ``header``."""
    if not header.shape:
        return ()
    rows = chunk_rows(header.shape[0], header.row_nbytes, budget)
    return (max(rows, 1), *(max(n, 1) for n in header.shape[1:]))


def row_chunk_ranges(
    header: NpyHeader, budget: int = CHUNK_BUDGET
) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Chunk-grid shape, byte offsets and lengths of every whole-row chunk.

    Offsets and lengths are flat ``uint64`` arrays in C order of the grid,
    ready for ``ChunkManifest.from_arrays`` or icechunk's
    ``set_virtual_refs_arr``.
    """
    ndim = len(header.shape)
    if ndim == 0:
        return (
            (),
            np.array([header.data_offset], np.uint64),
            np.array([header.dtype.itemsize], np.uint64),
        )
    if 0 in header.shape:
        zero = np.zeros(0, np.uint64)
        return tuple(0 for _ in header.shape), zero, zero
    rows = row_chunk_shape(header, budget)[0]
    nchunks = header.shape[0] // rows
    length = rows * header.row_nbytes
    offsets = header.data_offset + np.arange(nchunks, dtype=np.uint64) * np.uint64(length)
    lengths = np.full(nchunks, length, dtype=np.uint64)
    return (nchunks, *([1] * (ndim - 1))), offsets, lengths


def array_metadata(
    header: NpyHeader,
    *,
    dimension_names: Sequence[str] | None = None,
    attributes: Mapping[str, Any] | None = None,
    budget: int = CHUNK_BUDGET,
    fill_value: Any = None,
) -> ArrayV3Metadata:
    """Zarr v3 metadata of the array a header describes, with whole-row chunks.

    The ``bytes`` codec carries the file's byte order, so big-endian files are
    read in place; no compressor, since ``.npy`` data is raw.
    """
    endian = header.dtype.byteorder
    codecs: list[dict[str, Any]] = [{"name": "bytes"}]
    if header.dtype.itemsize > 1:
        big = endian == ">" or (endian == "=" and np.little_endian is False)
        codecs = [{"name": "bytes", "configuration": {"endian": "big" if big else "little"}}]
    return create_v3_array_metadata(
        shape=header.shape,
        data_type=header.dtype.newbyteorder("="),
        chunk_shape=row_chunk_shape(header, budget),
        fill_value=fill_value,
        codecs=codecs,
        attributes=dict(attributes or {}),
        dimension_names=tuple(dimension_names)
        if dimension_names is not None
        else tuple(f"dim_{i}" for i in range(len(header.shape))),
    )


def read_header(store: obstore.store.ObjectStore, path: str) -> tuple[NpyHeader, int]:
    """Fetch and parse the header of ``path`` in one ranged GET (two if huge).

    Returns the header and the object's size, so a truncated file is caught
    without another request.
    """
    result = obstore.get(store, path, options={"range": (0, PROBE_BYTES)})
    prefix = result.bytes().to_bytes()
    size = int(result.meta["size"])
    need = header_length(prefix)
    if need > len(prefix) and size >= need:
        prefix = obstore.get_range(store, path, start=0, end=need).to_bytes()
    header = parse_header(prefix)
    check_size(header, size, what=path)
    return header, size


class NpyParser:
    """Create a :class:`~virtualizarr.manifests.ManifestStore` from a ``.npy`` file.

    Parameters
    ----------
    variable_name
        Name of the array in the store; defaults to the file's stem, the name
        ``np.load`` users would give it.
    dimension_names
        Names of the axes; defaults to ``dim_0 ... dim_{n-1}``.
    chunk_budget
        Largest chunk in bytes; chunks are the largest whole-row runs dividing
        the first axis within it (always at least one row).
    attributes
        Extra attributes to attach to the array.
    """

    def __init__(
        self,
        variable_name: str | None = None,
        dimension_names: Sequence[str] | None = None,
        chunk_budget: int = CHUNK_BUDGET,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        if chunk_budget <= 0:
            raise ValueError(f"chunk_budget must be a positive byte count, got {chunk_budget}")
        self.variable_name = variable_name
        self.dimension_names = tuple(dimension_names) if dimension_names is not None else None
        self.chunk_budget = chunk_budget
        self.attributes = dict(attributes or {})

    def __call__(self, url: str, registry: ObjectStoreRegistry) -> ManifestStore:
        """Parse the header of ``url`` into a single-array ManifestStore.

        Parameters
        ----------
        url
            URL of the ``.npy`` file (``file:///…``, ``https://…``, ``s3://…``).
        registry
            Registry resolving ``url`` to an obstore store.
        """
        store, path = registry.resolve(url)
        header, _size = read_header(store, path)
        if self.dimension_names is not None and len(self.dimension_names) != len(header.shape):
            raise ValueError(
                f"{url} has {len(header.shape)} dimensions {header.shape}, but "
                f"{len(self.dimension_names)} dimension names were given"
            )
        name = self.variable_name or _stem(url)
        metadata = array_metadata(
            header,
            dimension_names=self.dimension_names,
            attributes=self.attributes,
            budget=self.chunk_budget,
        )
        grid, offsets, lengths = row_chunk_ranges(header, self.chunk_budget)
        if math.prod(grid) == 0 and header.shape:
            manifest = ChunkManifest(entries={}, shape=grid)
        else:
            manifest = ChunkManifest.from_arrays(
                paths=np.full(grid, url, dtype=np.dtypes.StringDType()),
                offsets=offsets.reshape(grid),
                lengths=lengths.reshape(grid),
                validate_paths=False,
            )
        array = ManifestArray(metadata=metadata, chunkmanifest=manifest)
        return ManifestStore(group=ManifestGroup(arrays={name: array}), registry=registry)


def _stem(url: str) -> str:
    base = url.rstrip("/").rsplit("/", 1)[-1]
    return base[:-4] if base.endswith(".npy") else base or "data"
