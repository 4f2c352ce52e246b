"""A whole zone-year as one lazy, dask-backed mosaic (xarray's backend machinery).

:class:`ZoneArray` is an xarray ``BackendArray``: indexing it assembles just
the selected window with :func:`~tessera_vz.reader.mosaic.read_window`, so
``ds.sel(...)``/``.isel(...)`` read only what is selected, and dask chunks
(one tile's size, aligned to the tile grid's origin) are independent tasks.
The array pickles as the recipe to reopen the index, not the open store, so
it runs on ``dask.distributed`` workers, which reopen it once per process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing
from zarr.core.sync import sync

from .mosaic import TileRects, Window, extent, read_window, spatial_ref, tile_rects

if TYPE_CHECKING:
    from .store import TesseraStore

_LOCK = threading.Lock()
_OPEN: dict[StoreRecipe, TesseraStore] = {}
_RECTS: dict[tuple[StoreRecipe, int, int], TileRects] = {}


@dataclass(frozen=True)
class StoreRecipe:
    """How to reopen a :class:`TesseraStore` in another process."""

    root: str
    allow_local_sources: bool
    allowed_sources: tuple[str, ...] | None
    s3_options: tuple[tuple[str, Any], ...]

    def open(self) -> TesseraStore:
        from .store import open_store

        with _LOCK:
            if self not in _OPEN:
                _OPEN[self] = open_store(
                    self.root,
                    allow_local_sources=self.allow_local_sources,
                    allowed_sources=self.allowed_sources,
                    s3_options=dict(self.s3_options),
                )
            return _OPEN[self]

    def rects(self, zone: int, year: int) -> TileRects:
        key = (self, zone, year)
        if key not in _RECTS:
            _RECTS[key] = tile_rects(self.open(), zone, year)
        return _RECTS[key]


class ZoneArray(BackendArray):
    """One variable of a zone mosaic, read window by window on demand."""

    def __init__(
        self, recipe: StoreRecipe, zone: int, year: int, window: Window, variable: str,
        bands: int, per_band: bool,
    ) -> None:  # fmt: skip
        self.recipe = recipe
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
        from .store import dequantise_values

        squeeze = [i for i, k in enumerate(key) if isinstance(k, (int, np.integer))]
        slices = [slice(int(k), int(k) + 1) if i in squeeze else k for i, k in enumerate(key)]
        rows, cols = slices[0], slices[1]
        r0, r1, rs = rows.indices(self.shape[0])
        c0, c1, cs = cols.indices(self.shape[1])
        sub = self.window.sub(slice(r0, max(r0, r1)), slice(c0, max(c0, c1)))
        ts = self.recipe.open()
        emb, scale, filled = sync(
            read_window(ts, self.zone, self.year, sub, self.recipe.rects(self.zone, self.year))
        )
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
    ts: TesseraStore, zone: int, year: int, *, dequantise: bool = True,
    chunks: dict[str, int] | None = None,
) -> xr.Dataset:  # fmt: skip
    """The lazy mosaic of every tile of a zone-year (see :meth:`TesseraStore.open_zone`)."""
    recipe = StoreRecipe(
        ts.root,
        ts._allow_local,
        tuple(ts._allowed) if ts._allowed is not None else None,
        tuple(sorted(ts._s3.items())),
    )
    rects = recipe.rects(zone, year)
    window = extent(rects, zone)
    bands = int(rects.facts["bands"].max())
    per_band = int(rects.facts["scales_ndim"].max()) == 3
    y, x = window.centres()
    grid = {"grid_mapping": "spatial_ref"}

    def var(name: str, dims: tuple[str, ...]) -> xr.Variable:
        arr = ZoneArray(recipe, zone, year, window, name, bands, per_band)
        return xr.Variable(dims, indexing.LazilyIndexedArray(arr), attrs=grid)

    if dequantise:
        data_vars = {"embeddings": var("values", ("y", "x", "band"))}
    else:
        sdims = ("y", "x", "band") if per_band else ("y", "x")
        data_vars = {
            "embeddings": var("embeddings", ("y", "x", "band")),
            "scales": var("scales", sdims),
        }
    ds = xr.Dataset(
        data_vars,
        coords={"y": ("y", y, {"units": "m"}), "x": ("x", x, {"units": "m"}),
                "band": np.arange(bands, dtype=np.int16),
                "spatial_ref": spatial_ref(window.epsg, window)},
        attrs={"proj:code": f"EPSG:{window.epsg}",
               "spatial:transform": [10.0, 0.0, window.left, 0.0, -10.0, window.top],
               "spatial:shape": [window.height, window.width], "tessera:zone": zone,
               "tessera:year": year},
    )  # fmt: skip
    tile_h = int(np.median(rects.height))
    tile_w = int(np.median(rects.width))
    return ds.chunk(chunks or {"y": tile_h, "x": tile_w, "band": -1})
