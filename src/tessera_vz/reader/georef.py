"""Georeferenced Datasets of grids: one builder for ``region`` and ``open_zone``.

Every grid tessera-vz returns carries the same CRS description twice: the
STAC ``proj:``/``spatial:`` attributes that TESSERA's Zarr stores use, and a
CF grid mapping (a ``spatial_ref`` coordinate with ``crs_wkt`` and GDAL's
``GeoTransform``, ``grid_mapping`` on the data variables) that rioxarray,
odc-geo and GDAL read. Grids may be in any CRS with any (non-square)
pixels; ``x``/``y`` carry CF names and units from the CRS (``longitude`` in
``degrees_east`` on a geographic grid, ``projection_x_coordinate`` in
metres on a projected one).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import xarray as xr

from tessera_vz.reader.grids import Grid, parse_crs
from tessera_vz.reader.windows import Window

#: CF spells the metre ``m``; pyproj spells it out.
_UNITS = {"metre": "m", "meter": "m"}
#: A grid's CRS text is ``AUTHORITY:CODE`` when it has one, else WKT.
_AUTHORITY_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*:[A-Za-z0-9_.]+\Z")


@functools.lru_cache(maxsize=128)
def crs_attrs(crs: str) -> dict[str, Any]:
    """CF grid-mapping attributes and WKT of a CRS; building them costs milliseconds, so once."""
    c = parse_crs(crs)
    return {**c.to_cf(), "spatial_ref": c.to_wkt()}


@functools.lru_cache(maxsize=128)
def axis_attrs(crs: str) -> tuple[dict[str, str], dict[str, str]]:
    """CF attributes of the ``x`` and ``y`` coordinates of a grid in ``crs``."""
    found: dict[str, dict[str, str]] = {}
    for axis in parse_crs(crs).cs_to_cf():
        attrs = {str(k): str(v) for k, v in axis.items()}
        attrs["units"] = _UNITS.get(attrs.get("units", ""), attrs.get("units", ""))
        found[attrs.get("axis", "")] = attrs
    x = found.get("X", {"standard_name": "projection_x_coordinate", "units": "m", "axis": "X"})
    y = found.get("Y", {"standard_name": "projection_y_coordinate", "units": "m", "axis": "Y"})
    return x, y


def proj_attrs(crs: str) -> dict[str, str]:
    """STAC projection attribute naming the CRS: ``proj:code``, else ``proj:wkt2``."""
    if _AUTHORITY_CODE.match(crs):
        return {"proj:code": crs}
    return {"proj:wkt2": parse_crs(crs).to_wkt()}


def spatial_ref(grid: Grid) -> xr.DataArray:
    """CF/GDAL grid-mapping variable, so rioxarray and GDAL know the CRS and transform."""
    attrs = {**crs_attrs(grid.crs), "GeoTransform": grid.geo_transform}
    return xr.DataArray(np.int32(0), attrs=attrs)


def grid_dataset(
    grid: Grid | Window,
    data_vars: Mapping[str, tuple[tuple[str, ...], Any]],
    bands: int,
    attrs: Mapping[str, Any] | None = None,
    *,
    rows: tuple[int, int] | None = None,
) -> xr.Dataset:
    """A Dataset on ``grid``: ``y``/``x`` pixel centres, ``band``, CRS both ways.

    ``data_vars`` maps names to ``(dims, data)``; data may be NumPy or lazy
    (xarray variables' data), so the in-memory ``region`` and the lazy
    ``open_zone`` share this one description of the grid. A zone window is
    the grid of that zone's 10 m lattice. ``rows`` ``(r0, r1)``: the data
    are those rows of ``grid`` only (a strip), whose ``y`` are the grid's own.
    """
    g = grid if isinstance(grid, Grid) else Grid.of_window(grid)
    y, x = g.centres()
    if rows is not None:
        y = y[rows[0] : rows[1]]
        g = replace(g, top=g.top - rows[0] * g.yres, height=rows[1] - rows[0])
    x_attrs, y_attrs = axis_attrs(g.crs)
    mapping = {"grid_mapping": "spatial_ref"}
    zone = {"tessera:zone": g.lattice} if g.lattice is not None else {}
    ds = xr.Dataset(
        {name: (dims, data, mapping) for name, (dims, data) in data_vars.items()},
        coords={"y": ("y", y, y_attrs), "x": ("x", x, x_attrs),
                "band": np.arange(bands, dtype=np.int16),
                "spatial_ref": spatial_ref(g)},
        attrs={**proj_attrs(g.crs), "spatial:transform": g.transform,
               "spatial:shape": [g.height, g.width], **zone, **(attrs or {})},
    )  # fmt: skip
    return ds
