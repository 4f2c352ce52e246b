"""Which tile each pixel of a zone window is read from (pure geometry, no I/O).

A zone pixel takes its value from the tile whose 0.1-degree cell contains the
pixel centre; where that tile is absent (not indexed, or the centre lies
outside its rectangle), from any tile of the zone that covers it.
:func:`ownership` decides it for a whole window, :func:`row_spans` turns the
answer into the column span each tile contributes to each window row.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.geometry import PIXEL, project, unproject
from tessera_vz.reader.windows import TileRects, Window, cell_id

#: Pixel centres closer than this (metres) to a projected cell edge are decided
#: by unprojecting them. A cell's meridian edges are straight in UTM to
#: centimetres, but its parallels bow by up to ~1.2 m over 0.1 degree of
#: longitude at mid-latitudes (sagitta of a circle of radius N cot(lat)), so
#: with this margin every other pixel is decided exactly by the quadrilateral.
EDGE_TOLERANCE = 3.0


def _quad_bounds(
    quad: NDArray[np.float64], y: NDArray[np.float64], margin: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per row, the eastings whose signed distance to every edge is below ``margin``.

    The quad is clockwise (x east, y north); each edge's half-plane bounds x
    from one side at a given northing, so a convex quad is, row by row, the
    open interval ``(lo, hi)``. Cheaper than testing every pixel.
    """
    lo = np.full(y.shape, -np.inf)
    hi = np.full(y.shape, np.inf)
    for i in range(4):
        (x0, y0), (x1, y1) = quad[i], quad[(i + 1) % 4]
        length = math.hypot(x1 - x0, y1 - y0)
        a = -(y1 - y0) / length  # distance = a * x + c(y)
        c = ((x1 - x0) * (y - y0) + (y1 - y0) * x0) / length
        if a > 0:
            np.minimum(hi, (margin - c) / a, out=hi)
        elif a < 0:
            np.maximum(lo, (margin - c) / a, out=lo)
        else:
            hi[c >= margin] = -np.inf
    return lo, hi


def _runs(lo: NDArray[np.int64], hi: NDArray[np.int64]) -> tuple[NDArray[np.int64], ...]:
    """Row and column indices of the column runs ``[lo[r], hi[r])`` of every row ``r``."""
    counts = hi - lo
    rows = np.repeat(np.arange(lo.size), counts)
    first = np.cumsum(counts) - counts
    return rows, lo[rows] + np.arange(int(counts.sum())) - first[rows]


def ownership(window: Window, rects: TileRects) -> NDArray[np.int32]:
    """Index of the tile each window pixel is read from, or -1 (no data).

    The owner is the tile whose 0.1-degree cell holds the pixel centre,
    found with a point-in-quadrilateral test in UTM (the cell's projected
    corners, as row intervals); pixels within :data:`EDGE_TOLERANCE` of an
    edge are decided by unprojecting them, so the result equals
    unprojecting every pixel at a fraction of the cost. A pixel its cell's
    tile does not cover goes to any covering tile.
    """
    h, w = window.height, window.width
    owner = np.full((h, w), -1, dtype=np.int32)  # half the bytes of int64 to scan
    if h == 0 or w == 0 or rects.names.size == 0:
        return owner
    right = rects.left + PIXEL * rects.width
    bottom = rects.top - PIXEL * rects.height
    cand = np.flatnonzero(
        (rects.left < window.left + PIXEL * w) & (right > window.left)
        & (rects.top > window.top - PIXEL * h) & (bottom < window.top)
    )  # fmt: skip
    if cand.size == 0:
        return owner
    y, x = window.centres()
    # Window rows/cols whose pixel centres lie inside each candidate's rectangle.
    c_in0 = np.searchsorted(x, rects.left[cand], side="right")
    c_in1 = np.searchsorted(x, right[cand], side="left")
    r_in0 = np.searchsorted(-y, -rects.top[cand], side="right")
    r_in1 = np.searchsorted(-y, -bottom[cand], side="left")
    lon = np.asarray(rects.facts["lon"], np.float64)[cand]
    lat = np.asarray(rects.facts["lat"], np.float64)[cand]
    # Corners NW, NE, SE, SW: clockwise with x east and y north.
    qx, qy = project(
        np.stack([lon - 0.05, lon + 0.05, lon + 0.05, lon - 0.05], axis=1),
        np.stack([lat + 0.05, lat + 0.05, lat - 0.05, lat - 0.05], axis=1),
        window.epsg,
    )
    near_rows: list[NDArray[np.int64]] = []
    near_cols: list[NDArray[np.int64]] = []
    cols = np.arange(w, dtype=np.int32)
    tol = EDGE_TOLERANCE
    for j, t in enumerate(cand):
        r0, r1, c0, c1 = int(r_in0[j]), int(r_in1[j]), int(c_in0[j]), int(c_in1[j])
        if r0 >= r1 or c0 >= c1:
            continue
        quad = np.stack([qx[j], qy[j]], axis=1)
        ys, xs = y[r0:r1], x[c0:c1]
        lo, hi = _quad_bounds(quad, ys, -tol)  # clearly inside
        olo, ohi = _quad_bounds(quad, ys, tol)  # not clearly outside
        a = np.searchsorted(xs, lo, side="right")
        b = np.searchsorted(xs, hi, side="left")
        oa = np.searchsorted(xs, olo, side="left")
        ob = np.searchsorted(xs, ohi, side="right")
        # Cells do not overlap, so no other tile holds these pixels clearly.
        # Only the box around them is scanned: a neighbour's cell is a thin
        # wedge of its rectangle's overlap with the window.
        clear = np.flatnonzero(a < b)
        if clear.size:
            ra, rb = int(clear[0]), int(clear[-1]) + 1
            ca, cb = int(a[clear].min()), int(b[clear].max())
            k = cols[None, ca:cb]
            inside = (k >= a[ra:rb, None].astype(np.int32)) & (k < b[ra:rb, None].astype(np.int32))
            np.copyto(owner[r0 + ra : r0 + rb, c0 + ca : c0 + cb], np.int32(t), where=inside)
        # Near the edges: [oa, a) and [b, ob) of each row (all of [oa, ob) if none is clear).
        some = a < b
        for n0, n1 in ((oa, np.where(some, np.maximum(a, oa), ob)), (np.where(some, b, ob), ob)):
            rr, cc = _runs(n0, np.maximum(n1, n0))
            near_rows.append(rr + r0)
            near_cols.append(cc + c0)
    if near_rows:
        rr, cc = np.concatenate(near_rows), np.concatenate(near_cols)
        elon, elat = unproject(x[cc], y[rr], window.epsg)
        at, match = tile_of_cell(rects.cell[cand], cell_id(elon, elat))  # candidate positions
        inside = match & (rr >= r_in0[at]) & (rr < r_in1[at]) & (cc >= c_in0[at]) & (cc < c_in1[at])
        owner[rr, cc] = np.where(inside, cand[at], -1)
    # Pixels whose cell's tile is absent or does not cover them: any covering tile.
    for j, t in enumerate(cand):
        sub = owner[int(r_in0[j]) : int(r_in1[j]), int(c_in0[j]) : int(c_in1[j])]
        sub[sub < 0] = t
    return owner


def tile_of_cell(
    tile_cells: NDArray[np.int64], cells: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Position in ``tile_cells`` of the tile of each cell, and whether there is one.

    A zone-year holds one tile per cell, so a cell names at most one tile.
    """
    if tile_cells.size == 0:
        return np.zeros(cells.shape, np.int64), np.zeros(cells.shape, bool)
    order = np.argsort(tile_cells)
    ordered = tile_cells[order]
    pos = np.clip(np.searchsorted(ordered, cells), 0, ordered.size - 1)
    return order[pos], ordered[pos] == cells


def owners_at(
    rects: TileRects, zone: int, rows: NDArray[np.int64], cols: NDArray[np.int64]
) -> NDArray[np.int32]:
    """:func:`ownership` for scattered pixels of a zone's lattice (a point's pixel).

    ``rows`` and ``cols`` are global lattice indices of the zone's northern
    grid (the pixel ``[10 c, 10 c + 10) x (-10 r - 10, -10 r]``). The rule is
    the window's, pixel by pixel: the tile whose cell holds the unprojected
    pixel centre, if its rectangle covers the pixel (the window version
    decides the same, unprojecting only near cell edges), else the covering
    tile listed first in ``rects``, as the window's last pass picks. Tiles
    covering a pixel have their cells among the 3 x 5 cells around it: a
    rectangle overhangs its cell by tens of metres north and south, and by
    the cell height times the grid convergence east and west (under 600 m,
    less than a cell's width, below 85 degrees of latitude; two cells are
    searched, enough to 88 degrees). Vectorised: thousands of points per
    call cost milliseconds.
    """
    owner = np.full(rows.shape, -1, dtype=np.int32)
    if rows.size == 0 or rects.names.size == 0:
        return owner
    lon, lat = unproject(PIXEL * cols + PIXEL / 2, -PIXEL * rows - PIXEL / 2, 32600 + zone)
    t_row = np.rint(-rects.top / PIXEL).astype(np.int64)  # global row of each tile's first row
    t_col = np.rint(rects.left / PIXEL).astype(np.int64)

    def covers(t: NDArray[np.int64], r: NDArray[np.int64], c: NDArray[np.int64]) -> NDArray[Any]:
        return (
            (r >= t_row[t])
            & (r < t_row[t] + rects.height[t])
            & (c >= t_col[t])
            & (c < t_col[t] + rects.width[t])
        )

    at, match = tile_of_cell(rects.cell, cell_id(lon, lat))
    mine = match & covers(at, rows, cols)
    owner[mine] = at[mine]
    rest = np.flatnonzero(~mine)
    if rest.size == 0:
        return owner
    r, c = rows[rest], cols[rest]
    lon_i = np.floor(lon[rest] * 10 + 1e-9).astype(np.int64)
    lat_i = np.floor(lat[rest] * 10 + 1e-9).astype(np.int64)
    best = np.full(rest.size, np.iinfo(np.int64).max)
    for d_lon in (-2, -1, 0, 1, 2):
        for d_lat in (-1, 0, 1):
            # cell_id's numbering, wrapped around the antimeridian
            near = (lon_i + d_lon + 1800) % 3600 * 4000 + (lat_i + d_lat + 900)
            at, match = tile_of_cell(rects.cell, near)
            take = match & covers(at, r, c) & (at < best)
            best[take] = at[take]
    found = best < np.iinfo(np.int64).max
    owner[rest[found]] = best[found]
    return owner


def row_spans(owner: NDArray[np.int32], window: Window, rects: TileRects) -> dict[str, Any]:
    """Per tile and window row it owns: the column span, and where it sits in the tile.

    One pass over the window finds the runs of equal owner along each row;
    a tile's span in a row runs from its first owned column to its last,
    ``full`` when that is one run (else the copy keeps the other owners'
    pixels). Sorted by tile, then row: one range per row and file.
    """
    h, w = owner.shape
    start = np.ones((h, w), dtype=bool)
    start[:, 1:] = owner[:, 1:] != owner[:, :-1]
    r, c = np.divmod(np.flatnonzero(start), w)  # run starts, row by row
    stop = np.append(c[1:], w)
    stop[np.append(r[1:] != r[:-1], True)] = w  # a row's last run ends at the edge
    t = owner[r, c]
    mine = t >= 0
    r, c, stop, t = r[mine], c[mine], stop[mine], t[mine]
    order = np.lexsort((c, r, t))
    r, c, stop, t = r[order], c[order], stop[order], t[order]
    new = np.ones(r.size, dtype=bool)
    new[1:] = (t[1:] != t[:-1]) | (r[1:] != r[:-1])
    first = np.flatnonzero(new)
    last = np.append(first[1:], r.size)[: first.size] - 1
    tiles, rows, c_lo = t[first].astype(np.int64), r[first].astype(np.int64), c[first]
    row0 = np.rint((rects.top[tiles] - window.top) / PIXEL).astype(np.int64)
    col0 = np.rint((window.left - rects.left[tiles]) / PIXEL).astype(np.int64)
    return {
        "full": first == last,
        "row": rows,
        "c_lo": c_lo.astype(np.int64),
        "n": (stop[last] - c_lo).astype(np.int64),
        "tile": tiles,
        "tile_row": rows + row0,  # row0: tile row of window row 0
        "tile_col": c_lo + col0,
    }
