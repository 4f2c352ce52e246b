"""Where a TESSERA tile sits on the 10 m lattice of its UTM zone.

A tile covers its 0.1-degree cell (centre +/- 0.05 degrees). Its pixels are
10 m squares in the cell's UTM zone; the tile's rectangle is the bounding box
of the cell's four projected corners, snapped outwards to the zone's 10 m
lattice. Everything here is vectorised over tiles because an index run
handles thousands at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pyproj import Transformer

PIXEL = 10.0
HALF_CELL = 0.05
#: Southern tiles join a northern zone grid with this northing offset
#: (the UTM false northing of the southern hemisphere).
FALSE_NORTHING = 10_000_000.0


def utm_zone(lon: ArrayLike) -> NDArray[np.int64]:
    """UTM zone number 1-60 of longitudes (clamped at the antimeridian)."""
    z = np.floor((np.asarray(lon, dtype=np.float64) + 180.0) / 6.0).astype(np.int64) + 1
    return np.clip(z, 1, 60)


def utm_epsg(lon: ArrayLike, lat: ArrayLike) -> NDArray[np.int64]:
    """EPSG code (326zz north, 327zz south) of the UTM zone of each point."""
    base = np.where(np.asarray(lat, dtype=np.float64) >= 0, 32600, 32700)
    return base + utm_zone(lon)


@lru_cache(maxsize=256)
def _to_utm(epsg: int) -> Transformer:
    return Transformer.from_crs(4326, epsg, always_xy=True)


@lru_cache(maxsize=256)
def _from_utm(epsg: int) -> Transformer:
    return Transformer.from_crs(epsg, 4326, always_xy=True)


def project(lon: ArrayLike, lat: ArrayLike, epsg: int) -> tuple[NDArray[np.float64], ...]:
    """Project WGS84 lon/lat to eastings/northings of ``epsg``."""
    e, n = _to_utm(int(epsg)).transform(
        np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    )
    return np.asarray(e, dtype=np.float64), np.asarray(n, dtype=np.float64)


def unproject(e: ArrayLike, n: ArrayLike, epsg: int) -> tuple[NDArray[np.float64], ...]:
    """Eastings/northings of ``epsg`` back to WGS84 lon/lat."""
    lon, lat = _from_utm(int(epsg)).transform(
        np.asarray(e, dtype=np.float64), np.asarray(n, dtype=np.float64)
    )
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


def cell_centre(lon: ArrayLike, lat: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    """Centre of the 0.1-degree cell holding each point (odd multiples of 0.05).

    Rounded to two decimals so that it prints as upstream names tiles.
    """
    lon_a = np.asarray(lon, dtype=np.float64)
    lat_a = np.asarray(lat, dtype=np.float64)
    # Work in hundredths so 0.1-degree edges are exact integers.
    clon = (np.floor(np.round(lon_a * 1e6) / 1e5) * 10 + 5) / 100
    clat = (np.floor(np.round(lat_a * 1e6) / 1e5) * 10 + 5) / 100
    return np.round(clon, 2), np.round(clat, 2)


@dataclass(frozen=True)
class TileGrids:
    """Vectorised geometry of many tiles (one entry per tile).

    ``left``/``top`` are the outer edges of the tile's pixel rectangle on the
    zone's 10 m lattice; pixel ``(r, c)`` has its centre at
    ``(left + 10 c + 5, top - 10 r - 5)``.
    """

    lon: NDArray[np.float64]
    lat: NDArray[np.float64]
    zone: NDArray[np.int64]
    epsg: NDArray[np.int64]
    left: NDArray[np.float64]
    top: NDArray[np.float64]
    height: NDArray[np.int64]
    width: NDArray[np.int64]
    #: Projected cell corners (tile, corner, [e, n]) in order NW, NE, SE, SW,
    #: used to decide which tile owns a pixel where rectangles overlap.
    corners: NDArray[np.float64]


def tile_grids(lon: ArrayLike, lat: ArrayLike) -> TileGrids:
    """Compute the UTM rectangle and size of tiles centred at ``lon``, ``lat``."""
    lon_a = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    lat_a = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    epsg = utm_epsg(lon_a, lat_a)
    corners = np.empty((lon_a.size, 4, 2), dtype=np.float64)
    dlon = np.array([-HALF_CELL, HALF_CELL, HALF_CELL, -HALF_CELL])
    dlat = np.array([HALF_CELL, HALF_CELL, -HALF_CELL, -HALF_CELL])
    for code in np.unique(epsg):
        sel = epsg == code
        e, n = project(
            lon_a[sel, None] + dlon[None, :], lat_a[sel, None] + dlat[None, :], int(code)
        )
        corners[sel, :, 0] = e
        corners[sel, :, 1] = n
    origin_e = np.minimum(corners[:, 0, 0], corners[:, 3, 0])
    origin_n = np.maximum(corners[:, 0, 1], corners[:, 1, 1])
    south = np.minimum(corners[:, 2, 1], corners[:, 3, 1])
    east = np.maximum(corners[:, 1, 0], corners[:, 2, 0])
    return TileGrids(
        lon=lon_a,
        lat=lat_a,
        zone=utm_zone(lon_a),
        epsg=epsg,
        left=np.floor(origin_e / PIXEL) * PIXEL,
        top=np.ceil(origin_n / PIXEL) * PIXEL,
        height=np.round((origin_n - south) / PIXEL).astype(np.int64),
        width=np.round((east - origin_e) / PIXEL).astype(np.int64),
        corners=corners,
    )


def pixel_centres(
    left: float, top: float, height: int, width: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Northings (descending) and eastings of pixel centres of one tile."""
    y = top - PIXEL * np.arange(height, dtype=np.float64) - PIXEL / 2
    x = left + PIXEL * np.arange(width, dtype=np.float64) + PIXEL / 2
    return y, x


def affine(left: float, top: float) -> list[float]:
    """GDAL-order affine ``[a, b, c, d, e, f]`` of a north-up 10 m grid."""
    return [PIXEL, 0.0, float(left), 0.0, -PIXEL, float(top)]
