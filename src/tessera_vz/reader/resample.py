"""Which zone pixel each pixel of an output grid takes: nearest neighbour across zones.

Pure geometry, no I/O. The rule, for an output pixel whose centre is ``p``:

1. Its zone is the UTM zone of the 0.1-degree cell holding ``p`` (tiles
   belong to the zone of their cell, so this is the zone whose tiles own the
   ground under ``p``).
2. Its source pixel is the pixel of that zone's 10 m lattice containing
   ``p`` (``floor`` of ``p``'s easting / 10 and of its northing / 10 on the
   zone's northern lattice, where southern tiles sit 10,000,000 m lower),
   and its value is that lattice pixel's value in the zone's mosaic: the
   tile whose cell holds the *lattice pixel's* centre, else any tile of the
   zone covering it (:mod:`.ownership`), exactly as ``open_zone`` serves it.
3. If no tile of that zone covers that lattice pixel, the pixel containing
   ``p`` of the adjacent zone across the nearer zone boundary is taken,
   when one of that zone's tiles covers it (tile rectangles overhang their
   cells, by up to a few hundred metres at a zone edge).
4. If neither covers it and ``p`` lies within :data:`REACH` of a zone
   boundary, the covered pixel nearest to ``p`` among the 3 x 3 lattice
   pixels around ``p`` in both zones is taken. Tiles of two zones can both
   stop a few metres short of the boundary between them (their rectangles
   are snapped to each zone's lattice; at the equator, where meridians do
   not slant, by up to 15 m), which would otherwise leave a seam of NaN
   along it where each side has data.

On the default grid (the lattice of one zone) step 2 is the identity for
that zone's pixels: a region inside one zone is that zone's mosaic,
unresampled, byte for byte. A pixel is no data only where no indexed tile
covers it by these rules, or where the chosen pixel's scale is invalid.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pyproj import Transformer

from tessera_vz.core.geometry import PIXEL, utm_zone
from tessera_vz.reader.grids import Grid, transformer
from tessera_vz.reader.windows import TileRects, Window

#: Degrees of longitude from a zone boundary within which a neighbour zone's
#: tiles can cover a pixel: a tile rectangle overhangs its cell by the cell
#: height times the tangent of the grid convergence (< 3 degrees at the zone
#: edge), under 0.06 degrees of longitude up to 85 degrees of latitude.
REACH = 0.5
#: Columns between exactly projected pixel centres in :func:`lattice_of`.
STRIDE = 32


def cell_zone(lon: NDArray[np.float64]) -> NDArray[np.int64]:
    """UTM zone of the 0.1-degree cell holding each longitude (as tiles are assigned)."""
    return utm_zone((np.floor(lon * 10 + 1e-9) + 0.5) / 10)


@dataclass(frozen=True)
class Pick:
    """Output pixels taken from one zone's mosaic, and the zone window holding them.

    ``out`` are flat indices into the output grid (row-major) and ``row`` /
    ``col`` their pixels in ``window``. A ``whole`` pick's window *is* the
    output grid (the grid's own lattice zone): it is taken pixel for pixel
    first, then its ``out`` pixels (seams) are gathered from it, then the
    other zones' picks overwrite the pixels they own.
    """

    zone: int
    window: Window
    out: NDArray[np.int64]
    row: NDArray[np.int64]
    col: NDArray[np.int64]
    whole: bool = False


def covered(rects: TileRects, window: Window) -> NDArray[np.bool_]:
    """Window pixels that some tile of ``rects`` covers (what the mosaic fills)."""
    mask = np.zeros((window.height, window.width), dtype=bool)
    if rects.names.size == 0 or mask.size == 0:
        return mask
    r0 = np.rint((window.top - rects.top) / PIXEL).astype(np.int64)
    c0 = np.rint((rects.left - window.left) / PIXEL).astype(np.int64)
    r1, c1 = r0 + rects.height, c0 + rects.width
    r0, r1 = np.clip(r0, 0, window.height), np.clip(r1, 0, window.height)
    c0, c1 = np.clip(c0, 0, window.width), np.clip(c1, 0, window.width)
    for t in np.flatnonzero((r1 > r0) & (c1 > c0)).tolist():
        mask[r0[t] : r1[t], c0[t] : c1[t]] = True
    return mask


def window_around(zone: int, rows: NDArray[np.int64], cols: NDArray[np.int64]) -> Window:
    """The zone window spanning lattice pixels (global ``rows`` south, ``cols`` east)."""
    g_top, g_left = int(rows.min()), int(cols.min())
    return Window(zone, g_left * PIXEL, -g_top * PIXEL,
                  int(rows.max()) - g_top + 1, int(cols.max()) - g_left + 1)  # fmt: skip


class Sampler:
    """The source pixel of every pixel of one output grid, zone by zone.

    The geometry (each pixel's zone and its lattice pixels) depends on the
    grid only and is worked out once; which tiles cover what depends on the
    year, so :meth:`picks` takes the year's tile rectangles.
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        h, w = grid.height, grid.width
        y, x = grid.centres()
        self._y, self._x = y, x
        self._lonlat: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None
        if grid.lattice is not None:
            self._primary, self._rows_near, self._lon_span = self._lattice_zones()
        else:
            lon, lat = self.lonlat()
            zones = cell_zone(lon).astype(np.int16)
            zones[~(np.isfinite(lon) & np.isfinite(lat))] = 0  # outside the CRS's domain: none
            self._primary = zones.reshape(h, w)
            self._rows_near = np.ones(h, dtype=bool)
            finite = lon[np.isfinite(lon)]
            self._lon_span = (float(finite.min()), float(finite.max())) if finite.size else (0, 0)
        self._coords: dict[int, tuple[NDArray[np.int64], ...]] = {}

    # -- geometry ------------------------------------------------------------
    def lonlat(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Lon/lat of every pixel centre (flat, row-major)."""
        if self._lonlat is None:
            self._lonlat = self._to_lonlat(np.arange(self.grid.size, dtype=np.int64))
        return self._lonlat

    def _to_lonlat(self, idx: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        r, c = np.divmod(idx, self.grid.width)
        if self._lonlat is not None:
            return self._lonlat[0][idx], self._lonlat[1][idx]
        if self.grid.crs == "EPSG:4326":
            return self._x[c], self._y[r]
        lon, lat = transformer(self.grid.crs, "EPSG:4326").transform(self._x[c], self._y[r])
        return np.asarray(lon, np.float64), np.asarray(lat, np.float64)

    def _lattice_zones(self) -> tuple[NDArray[np.int16], NDArray[np.bool_], tuple[float, float]]:
        """Each pixel's zone on a UTM lattice grid, without unprojecting every pixel.

        Along a row of a transverse Mercator grid longitude grows with
        easting, so a row's zones are runs: the row's two end pixels give
        its zones, and the first column of each later zone is found by
        bisection (a few hundred unprojections per row, not one per pixel).
        """
        h, w = self.grid.height, self.grid.width
        to_ll = transformer(self.grid.crs, "EPSG:4326")
        lon_l, _ = to_ll.transform(np.full(h, self._x[0]), self._y)
        lon_r, _ = to_ll.transform(np.full(h, self._x[-1]), self._y)
        lon_l, lon_r = np.asarray(lon_l, np.float64), np.asarray(lon_r, np.float64)
        zl, zr = cell_zone(lon_l), cell_zone(lon_r)
        zones = np.empty((h, w), dtype=np.int16)
        zones[:] = zl[:, None].astype(np.int16)
        cols = np.arange(w)
        for k in range(int(zl.min()) + 1, int(zr.max()) + 1):
            rows = np.flatnonzero((zl < k) & (zr >= k))
            if rows.size == 0:
                continue
            lo = np.zeros(rows.size, np.int64)  # zone < k here
            hi = np.full(rows.size, w - 1, np.int64)  # zone >= k here
            while (act := np.flatnonzero(hi - lo > 1)).size:
                mid = (lo[act] + hi[act]) // 2
                lon, _ = to_ll.transform(self._x[mid], self._y[rows[act]])
                ge = cell_zone(np.asarray(lon, np.float64)) >= k
                hi[act[ge]] = mid[ge]
                lo[act[~ge]] = mid[~ge]
            zones[rows] = np.where(cols[None, :] >= hi[:, None], np.int16(k), zones[rows])
        west = (zl - 1) * 6.0 - 180.0  # each row's first zone's west edge
        east = zr * 6.0 - 180.0
        near = (lon_l - west < REACH) | (east - lon_r < REACH) | (zl != zr)
        return zones, near, (float(lon_l.min()), float(lon_r.max()))

    def zones(self) -> list[int]:
        """Zones whose tiles may supply pixels (each pixel's, and neighbours within reach)."""
        lo, hi = self._lon_span
        found = set(range(int(utm_zone(lo - REACH)), int(utm_zone(hi + REACH)) + 1))
        if self.grid.lattice is not None:
            found.add(self.grid.lattice)
        return sorted(found)

    def _lattice_pixels(
        self, zone: int, idx: NDArray[np.int64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Global lattice row (southwards) and column of zone ``zone`` holding each pixel."""
        r, c = np.divmod(idx, self.grid.width)
        if zone == self.grid.lattice:
            g = self.grid
            top = round((g.top - g.false_northing) / PIXEL)
            return r - top, c + round(g.left / PIXEL)
        tr = transformer(self.grid.crs, f"EPSG:{32600 + zone}")
        return lattice_of(tr, self._x, self._y, r, c)

    def _primary_pixels(self, zone: int) -> tuple[NDArray[np.int64], ...]:
        """Pixels whose cell lies in ``zone`` and their lattice pixels there (cached)."""
        if zone not in self._coords:
            idx = np.flatnonzero(self._primary.ravel() == zone)
            self._coords[zone] = (idx, *self._lattice_pixels(zone, idx))
        return self._coords[zone]

    # -- per year ------------------------------------------------------------
    def picks(self, rects: Mapping[int, TileRects]) -> list[Pick]:
        """Where each output pixel is read from, given each zone's tile rectangles.

        ``rects`` holds the zones indexed for the year (others are skipped).
        On a lattice grid the lattice zone's pick comes first and spans the
        whole grid; later picks overwrite the pixels they own.
        """
        g = self.grid
        primary = self._primary.ravel()
        sourced = np.zeros(g.size, dtype=bool)
        chosen: dict[int, list[tuple[NDArray[np.int64], ...]]] = {}
        native = g.lattice if g.lattice in rects else None
        native_cover = None
        if native is not None:
            native_cover = covered(rects[native], g.window()).ravel()
            sourced |= native_cover
        # Steps 1-2: the zone of each pixel's cell.
        for z in np.unique(primary).tolist():
            if z == native or z not in rects:
                continue
            idx, rows, cols = self._primary_pixels(z)
            ok = covered_at(rects[z], z, rows, cols)
            chosen.setdefault(z, []).append((idx[ok], rows[ok], cols[ok]))
            sourced[idx[ok]] = True
        # Step 3: the adjacent zone across the nearer boundary.
        miss = np.flatnonzero(~sourced & np.repeat(self._rows_near, g.width))
        if miss.size:
            lon, _ = self._to_lonlat(miss)
            zp = primary[miss].astype(np.int64)
            other, close = across(lon, zp)
            miss, zp, other = miss[close], zp[close], other[close]
            for z in np.unique(other).tolist():
                if z not in rects or z == native:  # the lattice zone's cover is sourced already
                    continue
                sel = miss[other == z]
                rows, cols = self._lattice_pixels(z, sel)
                ok = covered_at(rects[z], z, rows, cols)
                chosen.setdefault(z, []).append((sel[ok], rows[ok], cols[ok]))
                sourced[sel[ok]] = True
            rest = ~sourced[miss]
            seams = self._seams(miss[rest], zp[rest], other[rest], rects, native_cover)
            for z, part in seams.items():
                chosen.setdefault(z, []).append(part)
        picks: list[Pick] = []
        if native is not None:
            extra = chosen.pop(native, [])
            out, rows, cols = (np.concatenate([p[k] for p in extra]) if extra
                               else np.zeros(0, np.int64) for k in range(3))  # fmt: skip
            window = g.window()
            top, left = _origin(window)
            picks.append(Pick(native, window, out, rows - top, cols - left, whole=True))
        for z, parts in sorted(chosen.items()):
            idx = np.concatenate([p[0] for p in parts])
            if idx.size == 0:
                continue
            rows = np.concatenate([p[1] for p in parts])
            cols = np.concatenate([p[2] for p in parts])
            window = window_around(z, rows, cols)
            top, left = _origin(window)
            picks.append(Pick(z, window, idx, rows - top, cols - left))
        return picks

    def _seams(
        self,
        idx: NDArray[np.int64],
        zp: NDArray[np.int64],
        other: NDArray[np.int64],
        rects: Mapping[int, TileRects],
        native_cover: NDArray[np.bool_] | None,
    ) -> dict[int, tuple[NDArray[np.int64], ...]]:
        """Step 4 on this grid: the lattice zone's cover is the grid's own (``native_cover``)."""

        def cover(z: int, gr: NDArray[np.int64], gc: NDArray[np.int64]) -> NDArray[np.bool_]:
            if z == self.grid.lattice and native_cover is not None:
                return self._in_grid(gr, gc, native_cover)
            return covered_at(rects[z], z, gr.ravel(), gc.ravel()).reshape(gr.shape)

        return nearest_covered(idx, zp, other, rects, self._projected, cover)

    def _projected(
        self, zone: int, idx: NDArray[np.int64]
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Easting and northing (northern lattice) of pixel centres in ``zone``."""
        r, c = np.divmod(idx, self.grid.width)
        if zone == self.grid.lattice:
            return self._x[c], self._y[r] - self.grid.false_northing
        e, n = transformer(self.grid.crs, f"EPSG:{32600 + zone}").transform(self._x[c], self._y[r])
        return np.asarray(e, np.float64), np.asarray(n, np.float64)

    def _in_grid(
        self, gr: NDArray[np.int64], gc: NDArray[np.int64], cover: NDArray[np.bool_]
    ) -> NDArray[np.bool_]:
        """Whether global lattice pixels lie in this (lattice) grid and are covered there."""
        g = self.grid
        r = gr - round(-(g.top - g.false_northing) / PIXEL)
        c = gc - round(g.left / PIXEL)
        inside = (r >= 0) & (r < g.height) & (c >= 0) & (c < g.width)
        ok = np.zeros(gr.shape, dtype=bool)
        ok[inside] = cover[r[inside] * g.width + c[inside]]
        return ok


def across(
    lon: NDArray[np.float64], zone: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Step 3's neighbour: the zone across the nearer boundary, and whether within :data:`REACH`."""
    west = (zone - 1) * 6.0 - 180.0
    to_west = lon - west < 3.0
    other = np.where(to_west, zone - 1, zone + 1)
    return other, np.where(to_west, lon - west, west + 6.0 - lon) < REACH


def nearest_covered(
    idx: NDArray[np.int64],
    zp: NDArray[np.int64],
    other: NDArray[np.int64],
    zones_read: Container[int],
    projected: Callable[[int, NDArray[np.int64]], tuple[NDArray[np.float64], ...]],
    cover: Callable[[int, NDArray[np.int64], NDArray[np.int64]], NDArray[np.bool_]],
) -> dict[int, tuple[NDArray[np.int64], ...]]:
    """Step 4: the nearest covered pixel among the 3 x 3 around each pixel, in both zones.

    ``idx`` are the pixels (of a grid, or points), ``zp`` and ``other``
    their two zones; ``projected(z, idx)`` gives their centres on zone
    ``z``'s northern lattice, ``cover(z, rows, cols)`` whether a tile of
    ``z`` covers global lattice pixels. Returns ``{zone: (idx, rows, cols)}``.
    """
    best = np.full(idx.size, np.inf)
    where = np.full(idx.size, -1, np.int64)
    at_row = np.zeros(idx.size, np.int64)
    at_col = np.zeros(idx.size, np.int64)
    steps = np.array([-1, 0, 1], np.int64)
    for zones in (zp, other):
        for z in np.unique(zones).tolist():
            if z not in zones_read:
                continue
            sel = np.flatnonzero(zones == z)
            e, n = projected(z, idx[sel])
            gr = np.floor(-n / PIXEL).astype(np.int64)[:, None] + np.repeat(steps, 3)
            gc = np.floor(e / PIXEL).astype(np.int64)[:, None] + np.tile(steps, 3)
            dist = (PIXEL * gc + PIXEL / 2 - e[:, None]) ** 2 + (
                -PIXEL * gr - PIXEL / 2 - n[:, None]
            ) ** 2
            dist[~cover(z, gr, gc)] = np.inf
            k = np.argmin(dist, axis=1)
            d = dist[np.arange(sel.size), k]
            better = d < best[sel]
            s = sel[better]
            best[s], where[s] = d[better], z
            at_row[s], at_col[s] = gr[better, k[better]], gc[better, k[better]]
    found: dict[int, tuple[NDArray[np.int64], ...]] = {}
    for z in np.unique(where[where >= 0]).tolist():
        m = where == z
        found[z] = (idx[m], at_row[m], at_col[m])
    return found


def lattice_of(
    tr: Transformer,
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    r: NDArray[np.int64],
    c: NDArray[np.int64],
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Global lattice row and column holding grid pixels ``(r, c)``, projected by ``tr``.

    Exactly ``floor(-northing / 10)`` and ``floor(easting / 10)`` of each
    pixel centre, at a fraction of the cost of projecting every pixel
    (~0.5 us each): along each row, centres are projected every
    :data:`STRIDE` columns and interpolated linearly in between; the
    interpolation error, measured at every segment's midpoint (where it
    peaks), is a few micrometres, and the pixels lying closer than twice
    that to a lattice line are projected exactly.
    """
    w = x.size
    knots = np.unique(np.append(np.arange(0, w, STRIDE), w - 1))
    if r.size < 4 * STRIDE or knots.size < 3:
        return exact_lattice(tr, x[c], y[r])
    if r.size > 1 and bool((r[1:] >= r[:-1]).all()):  # row-major pixels: rows without a sort
        first = np.empty(r.size, dtype=bool)
        first[0], first[1:] = True, r[1:] != r[:-1]
        rows, ri = r[first], np.cumsum(first) - 1
    else:
        rows, ri = np.unique(r, return_inverse=True)
    shape = (rows.size, knots.size - 1)
    ys = y[rows][:, None]
    with np.errstate(all="ignore"):
        ke, kn = (np.asarray(v, np.float64) for v in tr.transform(
            np.broadcast_to(x[knots][None, :], (rows.size, knots.size)),
            np.broadcast_to(ys, (rows.size, knots.size))))  # fmt: skip
        me, mn = (np.asarray(v, np.float64) for v in tr.transform(
            np.broadcast_to(((x[knots[:-1]] + x[knots[1:]]) / 2)[None, :], shape),
            np.broadcast_to(ys, shape)))  # fmt: skip
        err = max(
            float(np.max(np.abs((ke[:, :-1] + ke[:, 1:]) / 2 - me))),
            float(np.max(np.abs((kn[:, :-1] + kn[:, 1:]) / 2 - mn))),
        )
    if not err < 0.1:  # not smooth here (or not finite): project every pixel
        return exact_lattice(tr, x[c], y[r])
    tol = 2 * err + 1e-6
    j = np.minimum(c // STRIDE, knots.size - 2)  # knots are multiples of STRIDE, then w - 1
    t = (c - knots[j]) / (knots[j + 1] - knots[j])
    e = ke[ri, j] + (ke[ri, j + 1] - ke[ri, j]) * t
    n = kn[ri, j] + (kn[ri, j + 1] - kn[ri, j]) * t
    gr = np.floor(-n / PIXEL).astype(np.int64)
    gc = np.floor(e / PIXEL).astype(np.int64)
    fe = e - PIXEL * gc
    fn = -n - PIXEL * gr
    redo = np.flatnonzero((fe < tol) | (fe > PIXEL - tol) | (fn < tol) | (fn > PIXEL - tol))
    if redo.size:
        gr[redo], gc[redo] = exact_lattice(tr, x[c[redo]], y[r[redo]])
    return gr, gc


def exact_lattice(
    tr: Transformer, x: NDArray[np.float64], y: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    e, n = tr.transform(x, y)
    return (
        np.floor(-np.asarray(n, np.float64) / PIXEL).astype(np.int64),
        np.floor(np.asarray(e, np.float64) / PIXEL).astype(np.int64),
    )


def covered_at(
    rects: TileRects, zone: int, rows: NDArray[np.int64], cols: NDArray[np.int64]
) -> NDArray[np.bool_]:
    """Whether some tile covers each lattice pixel (global ``rows``, ``cols``)."""
    if rows.size == 0:
        return np.zeros(0, dtype=bool)
    window = window_around(zone, rows, cols)
    top, left = _origin(window)
    return covered(rects, window)[rows - top, cols - left]


def _origin(window: Window) -> tuple[int, int]:
    """Global lattice row and column of a window's first pixel."""
    return round(-window.top / PIXEL), round(window.left / PIXEL)
