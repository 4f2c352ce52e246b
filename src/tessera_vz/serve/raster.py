"""A year's coverage as a raster pyramid: Web Mercator PNG tiles of a fixed size at any zoom.

Sending every tile cell as GeoJSON does not scale (a global year is ~1.8 M
cells, hundreds of MB of JSON), so at low zoom the viewer draws coverage
from ``/api/coverage/{year}/{z}/{x}/{y}.png``: 256 x 256 pixels whatever
the number of tiles. The year's cells and gaps are one global grid of
0.1-degree cells (3600 x 1800 bytes), with coarser levels each the maximum
of 2 x 2 cells of the one below, so a map pixel covering many cells reads
one cell of the level whose cells are at least as wide as it, and no tile
vanishes at low zoom. A pixel is coloured by the UTM zone of its longitude
(the page's legend colours), gaps red, the rest transparent.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.cells import COLS, ROWS, CellSet
from tessera_vz.serve.coverage import Coverage

TILE = 256
#: Values of the grid: no cell, a gap, a tile (tiles win when levels are pooled).
EMPTY, GAP, TILE_CELL = 0, 1, 2
#: Zone colours, as in the page (``ZONE_COLOURS`` in viewer.js), and the gap colour.
ZONE_COLOURS = ("#2f6fde", "#e3892b", "#2a9d5c", "#9b51e0", "#c23b73", "#168a99",
                "#8c6d1f", "#5b6bd6", "#d9534f", "#3c8d40", "#b5651d", "#6a4c93")  # fmt: skip
GAP_COLOUR = "#d64545"
#: Opacity of the cells (the page's vector cells use 0.35 fill over a 1 px outline).
ALPHA = 150
MAX_ZOOM = 12


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16)


_PALETTE = np.array([_rgb(c) for c in ZONE_COLOURS], dtype=np.uint8)


class Pyramid:
    """Max-pooled levels of a year's global cell grid (level ``k``: cells of ``0.1 * 2**k`` deg)."""

    def __init__(self, tiles: list[CellSet], gaps: list[CellSet]) -> None:
        grid = np.zeros((ROWS[1] - ROWS[0], COLS[1] - COLS[0]), dtype=np.uint8)  # north first
        for sets, value in ((gaps, GAP), (tiles, TILE_CELL)):
            for cs in sets:
                c, r = cs.cells()
                rows = ROWS[1] - 1 - r
                cols = c - COLS[0]
                ok = (rows >= 0) & (rows < grid.shape[0]) & (cols >= 0) & (cols < grid.shape[1])
                grid[rows[ok], cols[ok]] = np.maximum(grid[rows[ok], cols[ok]], value)
        self.levels = [grid]
        while min(self.levels[-1].shape) > 1:
            g = self.levels[-1]
            h, w = (g.shape[0] + 1) // 2 * 2, (g.shape[1] + 1) // 2 * 2
            padded = np.zeros((h, w), np.uint8)
            padded[: g.shape[0], : g.shape[1]] = g
            self.levels.append(padded.reshape(h // 2, 2, w // 2, 2).max(axis=(1, 3)))

    def tile(self, z: int, x: int, y: int) -> NDArray[np.uint8]:
        """RGBA ``(256, 256, 4)`` of XYZ tile ``z/x/y``."""
        n = 2**z
        edges = np.arange(TILE + 1) / TILE
        lon_e = (x + edges) / n * 360.0 - 180.0
        lat_e = np.degrees(np.arctan(np.sinh(math.pi * (1 - 2 * (y + edges) / n))))
        # The level whose cells are at least a pixel wide (and so tall: a Mercator pixel
        # spans fewer degrees of latitude than of longitude): a pixel meets at most 2 x 2
        # of its cells, those under its edges, and is drawn if any is set.
        pixel_deg = 360.0 / (n * TILE)
        k = min(max(0, math.ceil(math.log2(pixel_deg / 0.1) - 1e-9)), len(self.levels) - 1)
        level = self.levels[k]
        size = 0.1 * 2**k
        eps = size * 1e-9
        cols = [np.floor((lon_e[:-1] + 180.0) / size), np.floor((lon_e[1:] - eps + 180.0) / size)]
        rows = [np.floor((ROWS[1] / 10 - lat_e[:-1]) / size),
                np.floor((ROWS[1] / 10 - lat_e[1:] - eps) / size)]  # fmt: skip
        values = np.zeros((TILE, TILE), np.uint8)
        for r in rows:
            r_ok = (r >= 0) & (r < level.shape[0])
            ri = np.clip(r, 0, level.shape[0] - 1).astype(np.int64)
            for c in cols:
                c_ok = (c >= 0) & (c < level.shape[1])
                ci = np.clip(c, 0, level.shape[1] - 1).astype(np.int64)
                seen = np.where(r_ok[:, None] & c_ok[None, :], level[ri][:, ci], EMPTY)
                np.maximum(values, seen, out=values)
        lon = (lon_e[:-1] + lon_e[1:]) / 2
        zone = np.clip(np.floor((lon + 180.0) / 6.0).astype(np.int64) + 1, 1, 60)
        rgba = np.zeros((TILE, TILE, 4), np.uint8)
        rgba[..., :3] = _PALETTE[zone % len(ZONE_COLOURS)][None, :, :]
        rgba[values == GAP, :3] = _rgb(GAP_COLOUR)
        rgba[..., 3] = np.where(values == EMPTY, 0, ALPHA)
        return rgba


def tile_png(pyramid: Pyramid, z: int, x: int, y: int) -> bytes:
    """PNG bytes of XYZ tile ``z/x/y`` (:class:`ValueError` for a tile that does not exist)."""
    if not 0 <= z <= MAX_ZOOM:
        raise ValueError(f"zoom must be 0-{MAX_ZOOM}, got {z}")
    if not (0 <= x < 2**z and 0 <= y < 2**z):
        raise ValueError(f"tile {z}/{x}/{y} does not exist: x and y are 0-{2**z - 1} at zoom {z}")
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pyramid.tile(z, x, y), mode="RGBA").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


class Pyramids:
    """Each year's :class:`Pyramid`, built on first use; the few most recent kept (~9 MB each)."""

    def __init__(self, coverage: Coverage, keep: int = 4) -> None:
        self.coverage = coverage
        self.keep = keep
        self._lock = threading.Lock()
        self._built: OrderedDict[int, Pyramid] = OrderedDict()

    def get(self, year: int) -> Pyramid:
        """The pyramid of ``year`` (its cells and gaps, every zone)."""
        with self._lock:
            if year in self._built:
                self._built.move_to_end(year)
                return self._built[year]
        pyramid = Pyramid(self.coverage.sets(year), [cs for cs, _ in self.coverage.gap_sets(year)])
        with self._lock:
            self._built[year] = pyramid
            while len(self._built) > self.keep:
                self._built.popitem(last=False)
        return pyramid
