"""Footprints of tiles in EPSG:4326: each tile's own UTM rectangle, unprojected.

A tile's pixels cover a rectangle of its UTM zone (``left``/``top`` on the
zone's 10 m lattice, ``width`` x ``height`` pixels). Its footprint in lon/lat
is that rectangle's outline transformed point by point; the edges are
densified first because a straight UTM edge is a (slightly) curved line in
lon/lat, and a catalog query must not miss a pixel lying just outside a
polygon drawn through the four corners only.

A tile touching the antimeridian (zones 1 and 60) gets a MultiPolygon split
at +/-180 degrees, as GeoJSON (RFC 7946) asks, instead of a polygon that
wraps around the globe. Everything is vectorised over tiles: a zone-year has
thousands.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import shapely
from numpy.typing import ArrayLike, NDArray

from tessera_vz.core.geometry import PIXEL, unproject

#: Segments each edge of a rectangle is cut into before transforming it.
#: A straight lon/lat line between two corners strays up to 1.3 m (2.4 m at
#: 84 N) from the true edge of a 0.1-degree tile; 4 segments bring that to
#: 0.08 m (0.16 m), 2% of a pixel, with 17 points a ring.
SEGMENTS = 4


def utm_bounds(
    left: ArrayLike, top: ArrayLike, height: ArrayLike, width: ArrayLike
) -> NDArray[np.float64]:
    """``(N, 4)`` ``[left, bottom, right, top]`` of tiles in their own UTM CRS."""
    lf = np.asarray(left, dtype=np.float64)
    tp = np.asarray(top, dtype=np.float64)
    return np.stack(
        [
            lf,
            tp - PIXEL * np.asarray(height, dtype=np.float64),
            lf + PIXEL * np.asarray(width, dtype=np.float64),
            tp,
        ],
        axis=1,
    )


def _rings(bounds: NDArray[np.float64], segments: int) -> NDArray[np.float64]:
    """Closed, densified rings ``(N, 4*segments + 1, 2)`` of rectangles, counter-clockwise."""
    t = np.linspace(0.0, 1.0, segments, endpoint=False)[None, :]
    left, bottom, right, top = (bounds[:, i, None] for i in range(4))
    ones = np.ones_like(t)
    # SW -> SE -> NE -> NW -> back to SW: counter-clockwise, as GeoJSON exterior rings are.
    xs = [left + (right - left) * t, right * ones, right - (right - left) * t, left * ones, left]
    ys = [bottom * ones, bottom + (top - bottom) * t, top * ones, top - (top - bottom) * t, bottom]
    return np.stack([np.concatenate(xs, axis=1), np.concatenate(ys, axis=1)], axis=2)


def footprint_rings(
    epsg: ArrayLike,
    bounds: ArrayLike,
    centre_lon: ArrayLike,
    *,
    segments: int = SEGMENTS,
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Densified rings in EPSG:4326 of UTM rectangles, and which cross the antimeridian.

    Parameters
    ----------
    epsg
        EPSG code of each rectangle's UTM zone.
    bounds
        ``(N, 4)`` ``[left, bottom, right, top]`` in that CRS (:func:`utm_bounds`).
    centre_lon
        The tile's centre longitude, used to unwrap longitudes near the
        antimeridian so a ring never jumps by 360 degrees.
    segments
        Segments per edge after densification.

    Returns
    -------
    rings : numpy.ndarray
        ``(N, 4*segments + 1, 2)`` closed counter-clockwise rings of
        ``(lon, lat)``; a crossing ring has longitudes beyond +/-180.
    crossing : numpy.ndarray
        ``(N,)`` True where a ring crosses +/-180 (to be split, :func:`split_antimeridian`).
    """
    codes = np.asarray(epsg, dtype=np.int64)
    box = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    centre = np.asarray(centre_lon, dtype=np.float64)
    rings = _rings(box, segments)
    lonlat = np.empty_like(rings)
    for code in np.unique(codes):
        sel = codes == code
        lon, lat = unproject(rings[sel, :, 0], rings[sel, :, 1], int(code))
        lonlat[sel, :, 0] = lon
        lonlat[sel, :, 1] = lat
    # Longitudes relative to the tile's centre, so a ring crossing +/-180
    # stays contiguous (e.g. 179.9 .. 180.1) before it is split.
    lonlat[:, :, 0] = centre[:, None] + (lonlat[:, :, 0] - centre[:, None] + 180.0) % 360.0 - 180.0
    crossing = (lonlat[:, :, 0].max(axis=1) > 180.0) | (lonlat[:, :, 0].min(axis=1) < -180.0)
    return lonlat, crossing


def footprints(
    epsg: ArrayLike,
    bounds: ArrayLike,
    centre_lon: ArrayLike,
    *,
    segments: int = SEGMENTS,
) -> NDArray[np.object_]:
    """Footprint geometries (shapely) in EPSG:4326 of UTM rectangles (:func:`footprint_rings`).

    Polygons, or MultiPolygons split at the antimeridian.
    """
    lonlat, crossing = footprint_rings(epsg, bounds, centre_lon, segments=segments)
    polys = shapely.polygons(lonlat)
    for i in np.flatnonzero(crossing):
        polys[i] = split_antimeridian(polys[i])
    return polys


#: WKB of a polygon with one ring (little-endian, 2-D), as ``shapely.to_wkb`` writes it.
_WKB_POLYGON, _WKB_ONE_RING = 3, 1


def polygons_wkb(rings: NDArray[np.float64]) -> pa.BinaryArray:
    """WKB of one-ring polygons ``(N, P, 2)``, written by numpy in one buffer (no geometry objects).

    Byte for byte what ``shapely.to_wkb(shapely.polygons(rings))`` gives on a
    little-endian machine: byte order 1, type 3, 1 ring, P points, then the
    coordinates as float64 (a global year is ~1.8 M footprints; building
    shapely objects and their WKB cost ~10 us each).
    """
    n, points = rings.shape[0], rings.shape[1]
    record = np.dtype([("order", "u1"), ("type", "<u4"), ("rings", "<u4"),
                       ("points", "<u4"), ("xy", "<f8", (points, 2))])  # fmt: skip
    out = np.empty(n, dtype=record)
    out["order"] = 1
    out["type"] = _WKB_POLYGON
    out["rings"] = _WKB_ONE_RING
    out["points"] = points
    out["xy"] = rings
    offsets = np.arange(0, (n + 1) * record.itemsize, record.itemsize, dtype=np.int32)
    return pa.BinaryArray.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out.view(np.uint8))]
    )


def split_antimeridian(poly: shapely.Geometry) -> shapely.Geometry:
    """A polygon with longitudes beyond +/-180 as a MultiPolygon within [-180, 180]."""
    inside = shapely.intersection(poly, shapely.box(-180.0, -90.0, 180.0, 90.0))
    east = shapely.intersection(poly, shapely.box(180.0, -90.0, 540.0, 90.0))
    west = shapely.intersection(poly, shapely.box(-540.0, -90.0, -180.0, 90.0))
    parts = [inside]
    if not east.is_empty:
        parts.append(shapely.transform(east, lambda c: c - np.array([360.0, 0.0])))
    if not west.is_empty:
        parts.append(shapely.transform(west, lambda c: c + np.array([360.0, 0.0])))
    polygons = [p for g in parts for p in shapely.get_parts(g) if not p.is_empty]
    return shapely.multipolygons(polygons)


def stac_bbox(geom: shapely.Geometry) -> list[float]:
    """``[west, south, east, north]`` of a footprint, STAC style.

    For a footprint split at the antimeridian ``west > east`` (the STAC rule
    for boxes crossing it), instead of a box spanning every longitude.
    """
    xmin, ymin, xmax, ymax = shapely.bounds(geom).tolist()
    if shapely.get_type_id(geom) == 6 and xmin <= -180.0 + 1e-9 and xmax >= 180.0 - 1e-9:
        parts = shapely.get_parts(geom)
        east_side = [p for p in parts if shapely.bounds(p)[0] >= 0]
        west_side = [p for p in parts if shapely.bounds(p)[0] < 0]
        west = min(float(shapely.bounds(p)[0]) for p in east_side)
        east = max(float(shapely.bounds(p)[2]) for p in west_side)
        return [west, ymin, east, ymax]
    return [xmin, ymin, xmax, ymax]
