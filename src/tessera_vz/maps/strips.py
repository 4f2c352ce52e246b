"""Maps computed in row strips through the region reader: one strip's memory, the region's grid.

Every map (classes, similarity, change) is a function of each pixel's
embedding. :func:`map_strips` works out the grid ``store.region`` would
return for the area once, then reads it a strip of whole rows at a time
(``store.region(..., rows=(r0, r1))``, pixel for pixel what the whole
region holds), hands the strip's dequantised embeddings to the map's
function and keeps only its result (a few numbers per pixel), so memory
holds one strip of 128-band embeddings however large the area. The result
is a Dataset on the region's grid (coordinates, CRS both ways, provenance
and dataset), identical whatever the strip height.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray

from tessera_vz.core.errors import TileNotFoundError
from tessera_vz.core.progress import ProgressStart, no_progress
from tessera_vz.maps.area import Area
from tessera_vz.reader.georef import grid_dataset
from tessera_vz.reader.grids import Grid

log = logging.getLogger(__name__)

#: Pixels per strip by default: 131,072 pixels of 128 bands are 64 MiB of
#: float32 (plus the int8 bytes and scales read), whatever the area.
STRIP_PIXELS = 1 << 17
#: Pixels of a strip computed at a time in float64 (32 MiB of 128 bands).
CHUNK_PIXELS = 1 << 15

#: ``func(values, valid)``: a strip's embeddings ``(years, h*w, bands)`` float32
#: (NaN where no data) and where every year is valid ``(h*w,)`` -> the map's
#: layers ``{name: (h*w, ...)}`` for those pixels.
StripFunction = Callable[[NDArray[np.float32], NDArray[np.bool_]], dict[str, NDArray[Any]]]


@dataclass(frozen=True)
class Layer:
    """One output variable of a map: its dtype, fill where no data, and extra dims."""

    dtype: Any
    fill: Any
    dims: tuple[str, ...] = ()
    size: int = 0
    attrs: Mapping[str, Any] = field(default_factory=dict)


def strip_rows(grid: Grid, strip_pixels: int = STRIP_PIXELS) -> list[tuple[int, int]]:
    """Rows ``[r0, r1)`` of each strip: whole rows, at most ``strip_pixels`` (at least one row)."""
    if strip_pixels < 1:
        raise ValueError(f"strip_pixels must be at least 1, got {strip_pixels}")
    step = max(1, strip_pixels // max(1, grid.width))
    return [(r, min(grid.height, r + step)) for r in range(0, grid.height, step)]


def map_strips(
    store: Any,
    area: Area,
    years: Sequence[int],
    func: StripFunction,
    layers: Mapping[str, Layer],
    *,
    attrs: Mapping[str, Any] | None = None,
    strip_pixels: int = STRIP_PIXELS,
    progress: ProgressStart = no_progress,
    label: str = "map",
) -> xr.Dataset:
    """Compute a map of ``area`` strip by strip; a Dataset on the region's grid.

    Each strip of whole rows is read through ``store.region(..., rows=…)``
    for ``years`` (embeddings dequantised, NaN where no data; the next
    strip is read while one is computed), and
    ``func(values, valid)`` is called with the pixels valid in every year
    only; other pixels keep each layer's ``fill``. ``progress(label,
    rows)`` reports rows done.

    Raises
    ------
    TileNotFoundError
        When no indexed tile covers the area in ``years`` (as ``region``).
    """
    grid, why = area.grid()
    out = {
        name: np.full((grid.height, grid.width, *((layer.size,) if layer.dims else ())),
                      layer.fill, dtype=layer.dtype)
        for name, layer in layers.items()
    }  # fmt: skip
    advance = progress(label, grid.height)
    zones: set[int] = set()
    valid_pixels = 0

    def read(rows: tuple[int, int]) -> xr.Dataset:
        return store.region(area.box, years=list(years), rows=rows, **area.region_keywords())

    strips = strip_rows(grid, strip_pixels)
    # The next strip is read while this one is computed (two strips in memory at most):
    # reading waits on the network, computing on the CPU, so a map costs about the larger.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tessera-vz-strip") as pool:
        pending = pool.submit(read, strips[0])
        for k, (r0, r1) in enumerate(strips):
            ds = pending.result()
            if k + 1 < len(strips):
                pending = pool.submit(read, strips[k + 1])
            zones.update(int(z) for z in ds.attrs.get("tessera:zones", []))
            emb = ds["embeddings"].values  # (years, h, w, bands)
            values = emb.reshape(len(years), -1, emb.shape[-1])
            del ds, emb
            valid = ~np.isnan(values).any(axis=(0, 2))
            idx = np.flatnonzero(valid)
            valid_pixels += idx.size
            if idx.size:
                for name, array in func(values[:, idx], valid[idx]).items():
                    out[name][r0:r1].reshape(-1, *out[name].shape[2:])[idx] = array
            del values
            advance(r1 - r0)
            log.debug("%s: rows %d-%d, %d valid pixels", label, r0, r1, idx.size)
    if not valid_pixels:
        raise TileNotFoundError(
            f"no indexed tile covers bbox {list(area.box)} with data in {list(years)}"
        )
    return _dataset(store, grid, why, area, years, zones, out, layers, attrs or {})


def _dataset(
    store: Any,
    grid: Grid,
    why: str,
    area: Area,
    years: Sequence[int],
    zones: set[int],
    out: Mapping[str, NDArray[Any]],
    layers: Mapping[str, Layer],
    attrs: Mapping[str, Any],
) -> xr.Dataset:
    """The map's arrays as a georeferenced Dataset naming what was read."""
    size = max((layer.size for layer in layers.values() if layer.dims), default=0)
    data_vars = {name: (("y", "x", *layer.dims), out[name]) for name, layer in layers.items()}
    info = {
        "tessera:bbox": list(map(float, area.box)),
        "tessera:grid": why,
        "tessera:resampling": "nearest",
        "tessera:zones": sorted(zones),
        "tessera:years": list(map(int, years)),
        **store.provenance((z, y) for z in zones for y in years),
        **attrs,
    }
    ds = grid_dataset(grid, data_vars, size, info)
    if not size:
        ds = ds.drop_vars("band")
    for name, layer in layers.items():
        ds[name].attrs.update(layer.attrs)
    return ds


def unit_rows(values: NDArray[Any]) -> NDArray[np.float64]:
    """Rows scaled to unit length in float64 (a zero row stays zero)."""
    v = np.asarray(values, dtype=np.float64)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)


def chunks(n: int, size: int = CHUNK_PIXELS) -> list[slice]:
    """Slices of ``range(n)`` of at most ``size`` (bounded float64 temporaries)."""
    return [slice(k, min(n, k + size)) for k in range(0, n, size)]
