"""Regions by polygon: the lon/lat box of an area, and which grid pixels lie inside it.

A region read for a polygon (``region(area=...)``, ``tessera-vz region
--region-file``) is the polygon's bounding box on the usual grid, with
every pixel whose centre lies outside the polygon set to no-data. Both
steps work in the polygon's own CRS: its outline is densified there before
being projected to lon/lat (a straight edge in British National Grid is not
straight in degrees), and pixel centres are projected into it to be tested.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.reader.grids import Grid, crs_text, parse_crs, transformer

#: Points per polygon edge length unit when densifying (edges split into this many parts).
_DENSIFY = 64
#: Pixel rows tested at a time (bounds the temporary coordinate arrays).
_ROWS = 256


def area_bbox(geometry: Any, crs: Any = "EPSG:4326") -> tuple[float, float, float, float]:
    """The lon/lat ``(west, south, east, north)`` of a polygon given in ``crs``."""
    import shapely

    if geometry is None or shapely.is_empty(geometry):
        raise ConfigurationError("the area is empty: give a polygon")
    if shapely.get_type_id(geometry) not in (3, 6):  # Polygon, MultiPolygon
        raise ConfigurationError(f"the area must be a polygon; got a {geometry.geom_type}")
    text = crs_text(parse_crs(crs))
    w, s, e, n = shapely.bounds(geometry)
    step = max(e - w, n - s) / _DENSIFY
    outline = shapely.get_coordinates(shapely.segmentize(geometry.boundary, step) if step > 0
                                      else geometry.boundary)  # fmt: skip
    x, y = outline[:, 0], outline[:, 1]
    if text != "EPSG:4326":
        with np.errstate(all="ignore"):
            x, y = transformer(text, "EPSG:4326").transform(x, y)
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ConfigurationError(f"the area cannot be projected from {text} to lon/lat")
    return float(x.min()), float(y.min()), float(x.max()), float(y.max())


def area_mask(grid: Grid, geometry: Any, crs: Any = "EPSG:4326") -> NDArray[np.bool_]:
    """``(height, width)``: True where a pixel's centre lies inside the polygon (in ``crs``)."""
    import shapely

    shapely.prepare(geometry)
    text = crs_text(parse_crs(crs))
    ys, xs = grid.centres()
    inside = np.zeros((grid.height, grid.width), bool)
    to_area = transformer(grid.crs, text) if text != grid.crs else None
    for r0 in range(0, grid.height, _ROWS):
        yy, xx = np.meshgrid(ys[r0 : r0 + _ROWS], xs, indexing="ij")
        if to_area is not None:
            with np.errstate(all="ignore"):
                xx, yy = to_area.transform(xx, yy)
        inside[r0 : r0 + _ROWS] = shapely.contains_xy(geometry, xx, yy)
    return inside
