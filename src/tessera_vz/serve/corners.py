"""Where a raster answer of the viewer lies: its outer corners in lon/lat, for the page.

The page lays a PNG (a preview, a map) on the map as an image source given
its four corners; a grid in UTM is not a lon/lat rectangle, so the corners
are projected one by one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pyproj import Transformer


def corners_lonlat(ds: Any) -> list[list[float]]:
    """Lon/lat of the region's outer corners: top-left, top-right, bottom-right, bottom-left."""
    x = np.asarray(ds["x"].values, dtype=np.float64)
    y = np.asarray(ds["y"].values, dtype=np.float64)
    dx = float(x[1] - x[0]) if x.size > 1 else 10.0
    dy = float(y[1] - y[0]) if y.size > 1 else -10.0
    left, right = x[0] - dx / 2, x[-1] + dx / 2
    top, bottom = y[0] - dy / 2, y[-1] + dy / 2
    to_lonlat = Transformer.from_crs(str(ds.attrs["proj:code"]), "EPSG:4326", always_xy=True)
    xs = np.array([left, right, right, left])
    ys = np.array([top, top, bottom, bottom])
    lon, lat = to_lonlat.transform(xs, ys)
    return [[round(float(a), 7), round(float(b), 7)] for a, b in zip(lon, lat, strict=True)]
