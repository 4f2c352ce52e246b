"""Regions on any grid: each zone's window read once, gathered onto the output grid.

The I/O half of :mod:`.resample`: given where every output pixel comes from
(a :class:`~tessera_vz.reader.resample.Pick` per zone), read each zone's
window with :func:`~tessera_vz.reader.mosaic.read_window` (only the needed
columns of each tile row; zones read concurrently) and copy the picked
pixels into the output with one vectorised gather per zone. Embeddings and
scales are copied together, so raw int8 output stays exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tessera_vz.reader.grids import Grid
from tessera_vz.reader.mosaic import band_count, read_window
from tessera_vz.reader.ranges import DEFAULT_GAP, ZoneYear
from tessera_vz.reader.resample import Pick
from tessera_vz.reader.windows import TileRects

#: Pixels gathered per step: bounds the temporary copy (8 MiB of 128-band pixels).
_GATHER = 1 << 16


async def read_grid(
    grid: Grid,
    picks: Sequence[Pick],
    sources: Mapping[int, tuple[ZoneYear, TileRects]],
    gap: int = DEFAULT_GAP,
) -> tuple[NDArray[np.int8], NDArray[np.float32], NDArray[np.bool_]]:
    """Raw embeddings ``(h, w, B)``, scales ``(h, w)`` or ``(h, w, B)`` and the filled mask.

    ``sources`` gives each picked zone's byte source and tile rectangles. A
    ``whole`` pick (the grid's own lattice zone) becomes the output as read,
    byte for byte; the others overwrite the pixels they own.
    """
    bands = {band_count(sources[p.zone][1], p.zone) for p in picks if sources[p.zone][1].names.size}
    if len(bands) > 1:
        raise ValueError(f"zones of this region hold different band counts {sorted(bands)}")
    b = bands.pop() if bands else 128
    read = await asyncio.gather(
        *(read_window(sources[p.zone][0], p.window, sources[p.zone][1], gap) for p in picks)
    )
    per_band = any(scale.ndim == 3 for _, scale, _ in read)
    shape = (grid.height, grid.width)
    if picks and picks[0].whole:
        emb, scale, filled = read[0]
        if per_band and scale.ndim == 2:
            scale = _per_band(scale, b)
    else:
        emb = np.zeros((*shape, b), np.int8)
        scale = np.full((*shape, b) if per_band else shape, np.nan, np.float32)
        filled = np.zeros(shape, bool)
    out_emb, out_scale = _pixels(emb), _pixels(scale)
    for pick, (w_emb, w_scale, w_filled) in zip(picks, read, strict=True):
        # A whole pick's window is the output itself: its gathers (fancy
        # indexing copies) run first, before any other zone writes into it.
        got = w_filled[pick.row, pick.col]
        out = pick.out[got]
        src = pick.row[got] * w_filled.shape[1] + pick.col[got]
        in_emb, in_scale = _pixels(w_emb), _pixels(w_scale)
        widen = per_band and w_scale.ndim == 2
        for k in range(0, out.size, _GATHER):  # bounded temporaries
            o, i = out[k : k + _GATHER], src[k : k + _GATHER]
            out_emb[o] = in_emb[i]
            out_scale[o] = _pixels(_per_band(in_scale[i], b)) if widen else in_scale[i]
        filled.reshape(-1)[out] = True
    return emb, scale, filled


def _pixels(a: NDArray[Any]) -> NDArray[Any]:
    """A C-contiguous ``(h, w, ...)`` array as one opaque item per pixel (a flat view).

    Gathering 128-byte items moves each pixel with one copy instead of 128
    element copies (measured: ~5x faster than fancy-indexing the band axis).
    """
    per = a.dtype.itemsize * int(np.prod(a.shape[2:], dtype=np.int64))
    if a.ndim <= 2 and a.dtype.itemsize == per:
        return a.reshape(-1)
    if not a.flags.c_contiguous:  # a copy would take writes away from the array
        raise ValueError("pixel views need C-contiguous arrays")
    return a.reshape(-1).view(np.dtype((np.void, per)))


def _per_band(scale: NDArray[np.float32], bands: int) -> NDArray[np.float32]:
    return np.ascontiguousarray(np.broadcast_to(scale[..., None], (*scale.shape, bands)))
