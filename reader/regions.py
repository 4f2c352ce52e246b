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

import numpy as np
from numpy.typing import NDArray

from .grids import Grid
from .mosaic import band_count, read_window
from .ranges import DEFAULT_GAP, ZoneYear
from .resample import Pick
from .windows import TileRects


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
    flat = (emb.reshape(-1, b), scale.reshape(grid.size, *scale.shape[2:]), filled.reshape(-1))
    for pick, (w_emb, w_scale, w_filled) in zip(picks, read, strict=True):
        # A whole pick's window is the output itself: its gathers (fancy
        # indexing copies) run first, before any other zone writes into it.
        got = w_filled[pick.row, pick.col]
        out, rows, cols = pick.out[got], pick.row[got], pick.col[got]
        flat[0][out] = w_emb[rows, cols]
        w_s = w_scale[rows, cols]
        flat[1][out] = w_s[:, None] if (per_band and w_s.ndim == 1) else w_s
        flat[2][out] = True
    return emb, scale, filled


def _per_band(scale: NDArray[np.float32], bands: int) -> NDArray[np.float32]:
    return np.ascontiguousarray(np.broadcast_to(scale[..., None], (*scale.shape, bands)))
