"""The GeoParquet 1.1 ``geo`` metadata of every table tessera-vz writes.

Points tables (``tessera-vz points``, ``TesseraStore.sample``) and the
catalog's ``tiles.parquet`` both carry one WKB geometry column of WGS 84
longitudes and latitudes; this is the one place their ``geo`` document is
built, so both follow the same version of the specification. The column
has no ``crs`` field: GeoParquet's default, OGC:CRS84 (WGS 84, longitude
first), is exactly what it holds, and readers (GeoPandas, DuckDB, GDAL)
expect the default rather than an EPSG:4326 PROJJSON whose axis order is
latitude first. A few keys written by hand with pyarrow: no GeoPandas
needed to write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

GEOPARQUET_VERSION = "1.1.0"
#: The name of the geometry column of every table written.
GEOMETRY = "geometry"
#: Fields of a GeoParquet bbox covering struct, in order.
BBOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")


def geo_metadata(
    geometry_types: Sequence[str],
    bbox: Sequence[float] | None = None,
    *,
    column: str = GEOMETRY,
    counterclockwise: bool = False,
    covering: str | None = None,
) -> dict[str, Any]:
    """The ``geo`` document of a table with one WKB geometry column in OGC:CRS84 (lon, lat).

    Parameters
    ----------
    geometry_types
        The types the column holds (``Point``, ``Polygon``, ...).
    bbox
        ``[xmin, ymin, xmax, ymax]`` of all geometries, if any.
    column
        The name of the geometry column (the primary one).
    counterclockwise
        Whether exterior rings are counter-clockwise (declared as
        ``orientation``; polygons only).
    covering
        The name of a struct column holding each row's bbox (fields
        :data:`BBOX_FIELDS`), declared so readers can prune row groups.
    """
    meta: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": sorted(set(geometry_types)),
        # No "crs": the specification's default, OGC:CRS84 (WGS 84, longitude first), which
        # is what the coordinates are. An explicit EPSG:4326 would say latitude first.
        "edges": "planar",
    }
    if counterclockwise:
        meta["orientation"] = "counterclockwise"
    if covering is not None:
        meta["covering"] = {"bbox": {k: [covering, k] for k in BBOX_FIELDS}}
    if bbox is not None:
        meta["bbox"] = [float(v) for v in bbox]
    return {"version": GEOPARQUET_VERSION, "primary_column": column, "columns": {column: meta}}
