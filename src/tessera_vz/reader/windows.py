"""Windows and tile rectangles on the 10 m lattice of one UTM zone.

A :class:`Window` is a north-up block of whole pixels on a zone's northern
lattice (southern tiles join it with northings minus 10,000,000 m, as
upstream readers do); :class:`TileRects` are a zone-year's tiles as
rectangles on that lattice, built once from the tiles table. Pure geometry:
no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.coords import check_bbox
from tessera_vz.core.errors import TileNotFoundError
from tessera_vz.core.geometry import FALSE_NORTHING, PIXEL, project, utm_zone
from tessera_vz.core.table import TileColumns

#: Largest window ``region`` assembles in memory (pixels); larger areas go
#: through :meth:`TesseraStore.open_zone`, which reads lazily per chunk.
MAX_PIXELS = 16_000_000


@dataclass(frozen=True)
class Window:
    """A north-up window of whole pixels on a zone's northern 10 m lattice."""

    zone: int
    left: float
    top: float
    height: int
    width: int

    @property
    def epsg(self) -> int:
        return 32600 + self.zone

    def centres(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Northings (descending) and eastings of the pixel centres."""
        y = self.top - PIXEL * np.arange(self.height, dtype=np.float64) - PIXEL / 2
        x = self.left + PIXEL * np.arange(self.width, dtype=np.float64) + PIXEL / 2
        return y.astype(np.float64), x.astype(np.float64)

    def sub(self, rows: slice, cols: slice) -> Window:
        r0, r1, _ = rows.indices(self.height)
        c0, c1, _ = cols.indices(self.width)
        return Window(self.zone, self.left + PIXEL * c0, self.top - PIXEL * r0,
                      max(0, r1 - r0), max(0, c1 - c0))  # fmt: skip


def window_for_bbox(bbox: tuple[float, float, float, float], zone: int | None = None) -> Window:
    """The smallest lattice window of ``zone`` covering a lon/lat box."""
    w, s, e, n = check_bbox(bbox)
    z = int(utm_zone((w + e) / 2)) if zone is None else int(zone)
    t = np.linspace(0.0, 1.0, 65)
    lons = np.concatenate([w + (e - w) * t, np.full(65, e), e - (e - w) * t, np.full(65, w)])
    lats = np.concatenate([np.full(65, s), s + (n - s) * t, np.full(65, n), n - (n - s) * t])
    x, y = project(lons, lats, 32600 + z)
    left = math.floor(float(x.min()) / PIXEL) * PIXEL
    top = math.ceil(float(y.max()) / PIXEL) * PIXEL
    right = math.ceil(float(x.max()) / PIXEL) * PIXEL
    bottom = math.floor(float(y.min()) / PIXEL) * PIXEL
    return Window(z, left, top, round((top - bottom) / PIXEL), round((right - left) / PIXEL))


def cell_id(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.int64]:
    return (np.floor(lon * 10 + 1e-9).astype(np.int64) + 1800) * 4000 + (
        np.floor(lat * 10 + 1e-9).astype(np.int64) + 900
    )


@dataclass
class TileRects:
    """Tile rectangles of a zone-year on the northern lattice."""

    names: NDArray[np.str_]
    left: NDArray[np.float64]
    top: NDArray[np.float64]
    height: NDArray[np.int64]
    width: NDArray[np.int64]
    cell: NDArray[np.int64]
    facts: dict[str, NDArray[Any]]


def tile_rects(table: TileColumns) -> TileRects:
    """Every tile of a zone-year's tiles table as a rectangle on the zone's northern grid."""
    col = table.data
    south = col["epsg"] >= 32700
    top = col["top"] - np.where(south, FALSE_NORTHING, 0.0)
    return TileRects(
        names=np.asarray(table.tile).astype(str),
        left=col["left"].astype(np.float64),
        top=top.astype(np.float64),
        height=col["height"].astype(np.int64),
        width=col["width"].astype(np.int64),
        cell=cell_id(col["lon"], col["lat"]),
        facts=dict(col),
    )


def extent(rects: TileRects, zone: int) -> Window:
    """The window covering every tile of a zone-year."""
    if rects.names.size == 0:
        raise TileNotFoundError(f"zone {zone} has no tiles")
    left = float(rects.left.min())
    top = float(rects.top.max())
    right = float((rects.left + PIXEL * rects.width).max())
    bottom = float((rects.top - PIXEL * rects.height).min())
    return Window(zone, left, top, round((top - bottom) / PIXEL), round((right - left) / PIXEL))
