"""What every table tessera-vz writes says about its CRS: GeoParquet's default, OGC:CRS84."""

from __future__ import annotations

from typing import Any

from pyproj import CRS


def is_crs84(crs: Any) -> bool:
    """``crs`` is WGS 84 longitude/latitude: OGC:CRS84, or EPSG:4326 once axis order is ignored."""
    if crs is None:
        return False
    got = CRS.from_user_input(crs)
    return got.equals(CRS("OGC:CRS84")) and got.equals(CRS("EPSG:4326"), ignore_axis_order=True)
