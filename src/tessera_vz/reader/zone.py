"""A whole zone-year as one lazy, dask-backed mosaic (xarray's backend machinery).

:class:`ZoneArray` is an xarray ``BackendArray``: indexing it assembles just
the selected window with :func:`~tessera_vz.reader.mosaic.read_window`, so
``ds.sel(...)``/``.isel(...)`` read only what is selected, and dask chunks
(one tile's size, aligned to the tile grid's origin) are independent tasks.
The array holds a picklable ``opener`` (a recipe to reopen the index with
the caller's read options and at the snapshot the mosaic was built from,
not the open index itself), so it runs on ``dask.distributed`` workers,
which reopen the index once per process and read exactly that version.

A zone mosaic holds that zone's tiles only. Its extent is the bounding box
of the zone's tiles, whose rectangles overhang their cells by up to a few
hundred metres into the neighbour zones; a selection that leaves the zone
gets those overhangs, then NaN, never the neighbour zone's pixels. Areas
across zones are read with ``TesseraStore.region(bbox, year, crs=...)``,
which resamples every zone onto one grid.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from tessera_vz.core.loop import sync
from tessera_vz.core.quantisation import dequantise as dequantise_values
from tessera_vz.reader.georef import grid_dataset
from tessera_vz.reader.mosaic import band_count, read_window
from tessera_vz.reader.range_fetch import ByteSource
from tessera_vz.reader.windows import TileRects, Window, extent


class ZoneSource(Protocol):
    """What a zone mosaic needs of an open index: a zone-year's byte source and tiles."""

    def zone_year(self, zone: int, year: int) -> tuple[ByteSource, TileRects]: ...


class ZoneArray(BackendArray):
    """One variable of a zone mosaic, read window by window on demand."""

    def __init__(
        self, opener: Callable[[], ZoneSource], zone: int, year: int, window: Window,
        variable: str, bands: int, per_band: bool,
    ) -> None:  # fmt: skip
        self.opener = opener
        self.zone = zone
        self.year = year
        self.window = window
        self.variable = variable
        self.bands = bands
        self.per_band = per_band
        with_band = variable != "scales" or per_band
        self.shape = (
            (window.height, window.width, bands) if with_band else (window.height, window.width)
        )
        self.dtype = np.dtype(
            {"values": "float32", "embeddings": "int8", "scales": "float32"}[variable]
        )

    def __getitem__(self, key: indexing.ExplicitIndexer) -> Any:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.BASIC, self._raw
        )

    def _raw(self, key: tuple[Any, ...]) -> np.ndarray:
        squeeze = [i for i, k in enumerate(key) if isinstance(k, (int, np.integer))]
        slices = [slice(int(k), int(k) + 1) if i in squeeze else k for i, k in enumerate(key)]
        rows, cols = slices[0], slices[1]
        r0, r1, rs = rows.indices(self.shape[0])
        c0, c1, cs = cols.indices(self.shape[1])
        sub = self.window.sub(slice(r0, max(r0, r1)), slice(c0, max(c0, c1)))
        source, rects = self.opener().zone_year(self.zone, self.year)
        emb, scale, filled = sync(read_window(source, sub, rects))
        if self.variable == "values":
            out = dequantise_values(emb, scale)
            out[~filled] = np.nan
        elif self.variable == "embeddings":
            out = emb
        else:
            out = scale
        out = out[::rs, ::cs]
        if len(slices) > 2:
            out = out[(slice(None), slice(None), *slices[2:])]
        if squeeze:
            out = out.squeeze(axis=tuple(squeeze))
        return out


def zone_dataset(
    opener: Callable[[], ZoneSource], zone: int, year: int, rects: TileRects, *,
    dequantise: bool = True, chunks: dict[str, int] | None = None,
    attrs: Mapping[str, object] | None = None,
) -> xr.Dataset:  # fmt: skip
    """The lazy mosaic of every tile of a zone-year (see :meth:`TesseraStore.open_zone`).

    ``opener`` must reopen the index at the snapshot ``rects`` come from;
    ``attrs`` (the version read, ...) are added to the Dataset's.
    """
    window = extent(rects, zone)
    bands = band_count(rects, zone)
    per_band = int(rects.facts["scales_ndim"].max()) == 3

    def var(name: str) -> Any:
        arr = ZoneArray(opener, zone, year, window, name, bands, per_band)
        return indexing.LazilyIndexedArray(arr)

    data_vars: dict[str, tuple[tuple[str, ...], Any]]
    if dequantise:
        data_vars = {"embeddings": (("y", "x", "band"), var("values"))}
    else:
        sdims = ("y", "x", "band") if per_band else ("y", "x")
        data_vars = {"embeddings": (("y", "x", "band"), var("embeddings")),
                     "scales": (sdims, var("scales"))}  # fmt: skip
    ds = grid_dataset(window, data_vars, bands, {"tessera:year": year, **(attrs or {})})
    tile_h = int(np.median(rects.height))
    tile_w = int(np.median(rects.width))
    return ds.chunk(chunks or {"y": tile_h, "x": tile_w, "band": -1})
