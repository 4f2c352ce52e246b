"""Which pixel a point reads: the region rule applied at one place (pure geometry, no I/O).

A point ``q`` reads exactly the pixel ``region(bbox around q, zone=Z)``
returns at ``q``, where ``Z`` is the zone of the 0.1-degree cell holding
``q`` (the zone its tile is named in):

- the pixel ``P`` of zone ``Z``'s 10 m lattice whose square holds ``q``
  (``floor(easting / 10)``, ``floor(-northing / 10)`` on the zone's
  northern lattice, southern points with negative northings; a point on a
  pixel edge belongs to the pixel east and south of it);
- valued by :mod:`.resample`'s rule at ``P``'s centre (the zone of the
  cell holding the centre, then ``Z``'s own mosaic, then the zone across
  the nearer boundary, then the nearest covered pixel at a seam), using the
  same functions (:func:`~.resample.across`, :func:`~.resample.nearest_covered`,
  :func:`~.resample.exact_lattice`);
- from the tile :func:`~.ownership.owners_at` gives, the per-pixel form of
  the ownership rule the mosaic reads windows with: the tile whose cell holds
  the pixel centre where it covers the pixel, else the first covering tile.

So a point at the south or east edge of its cell, where its cell's tile
stops short, is read from the neighbour that covers it, as the region
reads it; a point at latitude exactly 0.0 reads the southern tile's first
row. Everything is vectorised per zone: no Python loop per point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.geometry import PIXEL, project, unproject
from tessera_vz.reader.grids import transformer
from tessera_vz.reader.ownership import owners_at
from tessera_vz.reader.resample import across, cell_zone, exact_lattice, nearest_covered
from tessera_vz.reader.windows import TileRects


@dataclass
class PointPixels:
    """Per point: the zone read (0: none), the tile (index into that zone's rects, -1: none),
    the row and column in the tile, and the point's own zone (of its cell)."""

    zone: NDArray[np.int64]
    tile: NDArray[np.int64]
    row: NDArray[np.int64]
    col: NDArray[np.int64]
    home: NDArray[np.int64]


def point_pixels(
    rects_of: Callable[[int], TileRects | None],
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
) -> PointPixels:
    """The zone, tile and tile pixel each point reads (see the module docstring).

    ``rects_of(zone)`` gives the year's tile rectangles of a zone, or
    ``None`` where the year is not indexed there. Points whose coordinates
    are not finite are never located.
    """
    n = lon.size
    ok = np.isfinite(lon) & np.isfinite(lat)
    home = np.zeros(n, np.int64)
    home[ok] = cell_zone(lon[ok])
    zone = np.zeros(n, np.int64)
    g_row = np.zeros(n, np.int64)
    g_col = np.zeros(n, np.int64)
    for z in np.unique(home[ok]).tolist():
        sel = np.flatnonzero(ok & (home == z))
        got = _pick(rects_of, int(z), lon[sel], lat[sel])
        zone[sel], g_row[sel], g_col[sel] = got
    tile = np.full(n, -1, np.int64)
    row = np.zeros(n, np.int64)
    col = np.zeros(n, np.int64)
    for z in np.unique(zone[zone > 0]).tolist():
        sel = np.flatnonzero(zone == z)
        rects = rects_of(int(z))
        assert rects is not None  # a zone is only picked where it has tiles
        t = owners_at(rects, int(z), g_row[sel], g_col[sel]).astype(np.int64)
        tile[sel] = t  # covered, so owned: >= 0
        row[sel] = g_row[sel] - np.rint(-rects.top[t] / PIXEL).astype(np.int64)
        col[sel] = g_col[sel] - np.rint(rects.left[t] / PIXEL).astype(np.int64)
    zone[tile < 0] = 0
    return PointPixels(zone, tile, row, col, home)


def reachable_zones(lon: NDArray[np.float64]) -> list[int]:
    """Zones points at these longitudes may be read from: their cells' zones, and
    across the nearer zone boundary for points within :data:`~.resample.REACH` of it."""
    home = cell_zone(lon)
    other, close = across(lon, home)
    return sorted(set(np.unique(home).tolist()) | set(np.unique(other[close]).tolist()))


def _covered(
    rects: TileRects, zone: int, rows: NDArray[np.int64], cols: NDArray[np.int64]
) -> NDArray[np.bool_]:
    """Whether a tile covers each lattice pixel (per pixel: points may lie far apart, so
    :func:`~.resample.covered_at`'s mask of their bounding window could be huge)."""
    return owners_at(rects, zone, rows, cols) >= 0


def _pick(
    rects_of: Callable[[int], TileRects | None],
    native: int,
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Zone (0: none) and global lattice row and column of the pixel each point of one zone reads.

    :meth:`.resample.Sampler.picks`'s steps, for the points' lattice pixels
    on zone ``native``'s grid.
    """
    e, nn = project(lon, lat, 32600 + native)
    rows = np.floor(-nn / PIXEL).astype(np.int64)
    cols = np.floor(e / PIXEL).astype(np.int64)
    x = (PIXEL * cols + PIXEL / 2).astype(np.float64)  # P's centre
    y = (-PIXEL * rows - PIXEL / 2).astype(np.float64)
    lon_p, _ = unproject(x, y, 32600 + native)
    zp = cell_zone(lon_p)
    zone = np.zeros(lon.size, np.int64)
    at_r, at_c = rows.copy(), cols.copy()
    tables: dict[int, TileRects] = {}

    def rects(z: int) -> TileRects | None:
        if z not in tables:
            found = rects_of(z)
            if found is None:
                return None
            tables[z] = found
        return tables[z]

    def projected(z: int, idx: NDArray[np.int64]) -> tuple[NDArray[np.float64], ...]:
        if z == native:
            return x[idx], y[idx]
        pe, pn = transformer(f"EPSG:{32600 + native}", f"EPSG:{32600 + z}").transform(
            x[idx], y[idx]
        )
        return np.asarray(pe, np.float64), np.asarray(pn, np.float64)

    def take(z: int, idx: NDArray[np.int64], gr: NDArray[np.int64], gc: NDArray[np.int64]) -> None:
        zone[idx], at_r[idx], at_c[idx] = z, gr, gc

    def lattice(z: int, idx: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        if z == native:
            return rows[idx], cols[idx]
        tr = transformer(f"EPSG:{32600 + native}", f"EPSG:{32600 + z}")
        return exact_lattice(tr, x[idx], y[idx])

    own = rects(native)
    # Steps 1-2: the zone of the cell holding P's centre, where it is not the native zone.
    for z in np.unique(zp).tolist():
        if z == native or (r_z := rects(z)) is None:
            continue
        idx = np.flatnonzero(zp == z)
        gr, gc = lattice(z, idx)
        hit = _covered(r_z, z, gr, gc)
        take(z, idx[hit], gr[hit], gc[hit])
    # The native zone's own mosaic.
    if own is not None:
        idx = np.flatnonzero(zone == 0)
        hit = _covered(own, native, rows[idx], cols[idx])
        take(native, idx[hit], rows[idx[hit]], cols[idx[hit]])
    # Step 3: the zone across the nearer boundary.
    miss = np.flatnonzero(zone == 0)
    if miss.size == 0:
        return zone, at_r, at_c
    other, close = across(lon_p[miss], zp[miss])
    miss, other, zpm = miss[close], other[close], zp[miss][close]
    for z in np.unique(other).tolist():
        if z == native and own is not None:  # its cover was tried
            continue
        if (r_z := rects(z)) is None:
            continue
        idx = miss[other == z]
        gr, gc = lattice(z, idx)
        hit = _covered(r_z, z, gr, gc)
        take(z, idx[hit], gr[hit], gc[hit])
    # Step 4: the nearest covered pixel around P's centre, in both zones.
    rest = zone[miss] == 0
    if rest.any():
        for z in set(np.unique(zpm).tolist()) | set(np.unique(other).tolist()):
            rects(z)

        def cover(z: int, gr: NDArray[np.int64], gc: NDArray[np.int64]) -> NDArray[np.bool_]:
            return _covered(tables[z], z, gr.ravel(), gc.ravel()).reshape(gr.shape)

        found = nearest_covered(miss[rest], zpm[rest], other[rest], tables, projected, cover)
        for z, (idx, gr, gc) in found.items():
            take(z, idx, gr, gc)
    return zone, at_r, at_c
