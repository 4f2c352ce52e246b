"""Vector files in: GeoPackage, GeoJSON and shapefiles, read through pyogrio (GDAL).

Two users: ``tessera-vz points`` (observations as point features, the
attributes kept as columns) and ``tessera-vz region --region-file`` (an area
of interest as polygons). pyogrio is optional (the ``geo`` extra): without
it these suffixes are refused with a message naming the extra, and nothing
else needs it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tessera_vz.core.errors import ConfigurationError

log = logging.getLogger(__name__)

#: Suffixes read as vector files (lower case, no dot).
VECTOR_SUFFIXES = ("gpkg", "geojson", "shp")
#: The geometry column of a vector file read as a table.
GEOMETRY = "geometry"


def read_vector(path: str | Path, what: str) -> tuple[pa.Table, str | None]:
    """The features of a vector file: attributes plus WKB ``geometry``, and the file's CRS.

    The CRS is ``AUTHORITY:CODE`` or WKT as GDAL reports it, ``None`` when
    the file has none (GeoJSON is lon/lat by definition).

    Raises
    ------
    ConfigurationError
        pyogrio is not installed, or GDAL cannot read the file.
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    try:
        import pyogrio
    except ImportError:
        raise ConfigurationError(
            f"reading {what} (.{suffix}) needs pyogrio: pip install 'tessera-vz[geo]'"
        ) from None
    try:
        meta, table = pyogrio.read_arrow(str(path))
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigurationError(f"cannot read {what} as a vector file: {first}") from None
    name = meta.get("geometry_name") or "wkb_geometry"
    if name not in table.column_names:
        raise ConfigurationError(f"{what} has no geometry; columns: {table.column_names}")
    i = table.schema.get_field_index(name)
    if GEOMETRY in table.column_names and name != GEOMETRY:  # an attribute named geometry
        table = table.rename_columns([f"{c}_attribute" if c == GEOMETRY else c
                                      for c in table.column_names])  # fmt: skip
    table = table.set_column(i, GEOMETRY, table.column(i).cast(pa.binary()))
    crs = meta.get("crs") or None
    log.info("%s: %d features, geometry %s, CRS %s", what, table.num_rows,
             meta.get("geometry_type"), crs)  # fmt: skip
    return table, crs


def read_area(path: str | Path) -> tuple[Any, str]:
    """The polygons of a vector file as one (multi)polygon, and its CRS (default EPSG:4326).

    Raises
    ------
    ConfigurationError
        The file is missing or unreadable, holds no polygon, or holds
        points or lines (a region is an area).
    """
    import shapely

    what = f"region file {str(path)!r}"
    p = Path(path)
    if not p.is_file():
        raise ConfigurationError(f"{what} {'is a folder' if p.is_dir() else 'does not exist'}")
    suffix = p.suffix.lower().lstrip(".")
    if suffix not in VECTOR_SUFFIXES:
        found = f"'.{suffix}'" if suffix else "no suffix"
        raise ConfigurationError(f"{what} must be .geojson, .gpkg or .shp; got {found}")
    table, crs = read_vector(p, what)
    geoms = shapely.from_wkb(table.column(GEOMETRY).to_numpy(zero_copy_only=False))
    geoms = geoms[~(shapely.is_missing(geoms) | shapely.is_empty(geoms))]
    if geoms.size == 0:
        raise ConfigurationError(f"{what} holds no geometry; give a polygon")
    kinds = shapely.get_type_id(geoms)
    bad = np.flatnonzero(~np.isin(kinds, (3, 6)))  # Polygon, MultiPolygon
    if bad.size:
        kind = shapely.get_type_id(geoms[bad[0]])
        names = {0: "Point", 1: "LineString", 4: "MultiPoint", 5: "MultiLineString",
                 7: "GeometryCollection"}  # fmt: skip
        raise ConfigurationError(
            f"{what} holds a {names.get(int(kind), 'non-polygon')} ({bad.size} of {geoms.size} "
            "features); a region needs polygons (points go to `tessera-vz points`)"
        )
    area = shapely.union_all(shapely.make_valid(geoms))
    return area, crs or "EPSG:4326"
