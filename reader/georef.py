"""Georeferenced Datasets of zone grids: one builder for ``region`` and ``open_zone``.

Every grid tessera-vz returns carries the same CRS description twice: the
STAC ``proj:``/``spatial:`` attributes that TESSERA's Zarr stores use, and a
CF grid mapping (a ``spatial_ref`` coordinate with ``crs_wkt`` and GDAL's
``GeoTransform``, ``grid_mapping`` on the data variables) that rioxarray,
odc-geo and GDAL read.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
from pyproj import CRS

from .geometry import PIXEL
from .windows import Window


@functools.lru_cache(maxsize=128)
def crs_attrs(epsg: int) -> dict[str, Any]:
    """CF attributes and WKT of a CRS; building them costs milliseconds, so once."""
    crs = CRS.from_epsg(epsg)
    return {**crs.to_cf(), "spatial_ref": crs.to_wkt()}


def spatial_ref(epsg: int, window: Window) -> xr.DataArray:
    """CF/GDAL grid-mapping variable, so rioxarray and GDAL know the CRS."""
    transform = f"{window.left} {PIXEL} 0 {window.top} 0 {-PIXEL}"
    attrs = {**crs_attrs(epsg), "GeoTransform": transform}
    return xr.DataArray(np.int32(0), attrs=attrs)


def grid_dataset(
    window: Window,
    data_vars: Mapping[str, tuple[tuple[str, ...], Any]],
    bands: int,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """A Dataset on ``window``'s grid: ``y``/``x`` pixel centres, ``band``, CRS both ways.

    ``data_vars`` maps names to ``(dims, data)``; data may be NumPy or lazy
    (xarray variables' data), so the in-memory ``region`` and the lazy
    ``open_zone`` share this one description of the grid.
    """
    y, x = window.centres()
    grid = {"grid_mapping": "spatial_ref"}
    ds = xr.Dataset(
        {name: (dims, data, grid) for name, (dims, data) in data_vars.items()},
        coords={"y": ("y", y, {"units": "m", "standard_name": "projection_y_coordinate"}),
                "x": ("x", x, {"units": "m", "standard_name": "projection_x_coordinate"}),
                "band": np.arange(bands, dtype=np.int16),
                "spatial_ref": spatial_ref(window.epsg, window)},
        attrs={"proj:code": f"EPSG:{window.epsg}",
               "spatial:transform": [PIXEL, 0.0, window.left, 0.0, -PIXEL, window.top],
               "spatial:shape": [window.height, window.width],
               "tessera:zone": window.zone, **(attrs or {})},
    )  # fmt: skip
    return ds
