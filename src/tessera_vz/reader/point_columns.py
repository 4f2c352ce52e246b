"""Where the points of a table are: lon/lat columns, or a point geometry column.

:func:`points_input` takes what a user holds (an Arrow table, a pandas or
geopandas frame, anything exposing the Arrow C stream) and finds each row's
coordinates in EPSG:4326 degrees, with the columns to keep beside them:
named or recognised lon/lat columns (numbers, or text a CSV left them as),
or WKB / GeoArrow points in any CRS pyproj reads. A cell that is missing
marks its row ``empty``; a value that is not a number is an invalid
coordinate, never a failure of the whole table. No I/O.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from tessera_vz.core.errors import ConfigurationError

log = logging.getLogger(__name__)


#: Column names taken as longitude / latitude when none is named (case-insensitive).
LON_NAMES = ("lon", "longitude", "lng")
LAT_NAMES = ("lat", "latitude")
#: The name of the output's point geometry column.
GEOMETRY = "geometry"
#: Columns every sampled row gets, before the bands and the geometry.
ADDED = ("point_id", "year", "status", "tile", "row", "col")


@dataclass
class PointsInput:
    """Points to sample: the columns to keep and each row's coordinates.

    ``lon``/``lat`` are float64 degrees (EPSG:4326), NaN where ``empty``
    (a missing cell or geometry) or where the input held something that is
    not a number; ``source`` says where they came from, for messages.
    """

    table: pa.Table
    lon: NDArray[np.float64]
    lat: NDArray[np.float64]
    empty: NDArray[np.bool_]
    source: str

    @property
    def size(self) -> int:
        return int(self.lon.size)


def points_input(
    points: Any,
    *,
    lon: str | None = None,
    lat: str | None = None,
    geometry: str | None = None,
    crs: Any = None,
    what: str = "the points",
) -> PointsInput:
    """Where each point is, from lon/lat columns or a point geometry column.

    ``points`` is a ``pyarrow.Table``, a pandas ``DataFrame``, a geopandas
    ``GeoDataFrame`` (its active geometry is used, in its CRS) or anything
    exposing the Arrow C stream. Coordinates come from ``geometry`` (a WKB or
    GeoArrow point column in ``crs``, default EPSG:4326 / OGC:CRS84) when
    given, else from the ``lon`` and ``lat`` columns, which default to a
    column named ``lon``/``longitude``/``lng`` and ``lat``/``latitude`` (in
    any case). ``x``/``y`` are never taken for lon/lat: name them.

    Raises
    ------
    ConfigurationError
        A named column is missing, no lon/lat column is found (the message
        lists the columns there are), or a column cannot hold coordinates.
    """
    table, geometry, crs = _as_table(points, geometry, crs)
    if geometry is not None and lon is None and lat is None:
        if geometry not in table.column_names:
            raise ConfigurationError(
                f"{what} have no geometry column {geometry!r}; columns: {table.column_names}"
            )
        x, y, empty = _from_geometry(table.column(geometry), geometry, crs, what)
        kept = table.drop_columns([geometry])
        source = f"geometry column {geometry!r}"
    else:
        lon_col = _column(table, lon, LON_NAMES, "--lon", "longitude", what)
        lat_col = _column(table, lat, LAT_NAMES, "--lat", "latitude", what)
        x, ex = _numbers(table.column(lon_col), lon_col, what)
        y, ey = _numbers(table.column(lat_col), lat_col, what)
        empty = ex | ey
        kept = table
        source = f"columns {lon_col!r}/{lat_col!r}"
    return PointsInput(_renamed(kept), x, y, empty, source)


def _as_table(points: Any, geometry: str | None, crs: Any) -> tuple[pa.Table, str | None, Any]:
    """An Arrow table of ``points``; a GeoDataFrame's geometry as WKB with its CRS."""
    if isinstance(points, pa.Table):
        return points, geometry, crs
    if isinstance(points, pa.RecordBatch):
        return pa.Table.from_batches([points]), geometry, crs
    active = getattr(points, "geometry", None)
    if hasattr(points, "to_wkb") and active is not None and hasattr(active, "crs"):
        import shapely

        name = geometry or active.name
        frame = points.drop(columns=[active.name]) if active.name in points.columns else points
        table = pa.Table.from_pandas(frame, preserve_index=False)
        wkb = shapely.to_wkb(np.asarray(active.values), output_dimension=2)
        table = table.append_column(name, pa.array(wkb, pa.binary()))
        own = active.crs.to_json_dict() if active.crs is not None else None
        return table, name, crs if crs is not None else own
    if hasattr(points, "columns") and hasattr(points, "iloc"):  # pandas
        return pa.Table.from_pandas(points, preserve_index=False), geometry, crs
    if hasattr(points, "__arrow_c_stream__"):
        return pa.table(points), geometry, crs
    raise ConfigurationError(
        f"points must be a pyarrow Table or a pandas/geopandas DataFrame; got "
        f"{type(points).__name__}"
    )


def _column(
    table: pa.Table, given: str | None, names: Sequence[str], flag: str, what_axis: str, what: str
) -> str:
    if given is not None:
        if given not in table.column_names:
            raise ConfigurationError(
                f"{what} have no column {given!r} ({flag}); columns: {table.column_names}"
            )
        return given
    lower = {c.lower(): c for c in table.column_names}
    for name in names:
        if name in lower:
            return lower[name]
    raise ConfigurationError(
        f"{what} have no {what_axis} column (looked for {', '.join(names)}); columns: "
        f"{table.column_names}. Name it with {flag} COLUMN"
    )


def _numbers(col: pa.ChunkedArray, name: str, what: str) -> tuple[NDArray[Any], NDArray[Any]]:
    """A coordinate column as float64 (NaN where not a number) and where it is empty."""
    t = col.type
    if pa.types.is_null(t):
        return np.full(len(col), np.nan), np.ones(len(col), bool)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        empty = col.is_null().to_numpy(zero_copy_only=False)
        values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        return np.where(empty, np.nan, values).astype(np.float64), empty
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        # A CSV column with a stray word in it: that row's coordinate is invalid.
        text = pc.utf8_trim_whitespace(col)
        empty = pc.fill_null(pc.equal(text, ""), True).to_numpy(zero_copy_only=False)
        values = np.full(len(col), np.nan)
        for i, v in enumerate(text.to_pylist()):
            if not empty[i]:
                with contextlib.suppress(ValueError):  # not a number: invalid coordinate
                    values[i] = float(v)
        return values, empty
    raise ConfigurationError(f"column {name!r} of {what} holds {t}, not coordinates in degrees")


def _from_geometry(
    col: pa.ChunkedArray, name: str, crs: Any, what: str
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Point coordinates of a WKB or GeoArrow column, in EPSG:4326 lon/lat."""
    import shapely

    t = col.type
    if pa.types.is_struct(t) and {"x", "y"} <= {t.field(i).name for i in range(t.num_fields)}:
        empty = col.is_null().to_numpy(zero_copy_only=False)
        x = pc.struct_field(col, "x").to_numpy(zero_copy_only=False).astype(np.float64)
        y = pc.struct_field(col, "y").to_numpy(zero_copy_only=False).astype(np.float64)
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        geoms = shapely.from_wkb(col.to_numpy(zero_copy_only=False), on_invalid="raise")
        empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
        kinds = shapely.get_type_id(geoms)
        bad = np.flatnonzero(~empty & (kinds != 0))
        if bad.size:
            kind = shapely.get_type_id(geoms[bad[0]])
            names = {1: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString",
                     6: "MultiPolygon", 7: "GeometryCollection"}  # fmt: skip
            raise ConfigurationError(
                f"geometry column {name!r} of {what} holds a {names.get(int(kind), 'non-point')} "
                f"in row {int(bad[0])} ({bad.size} such rows); points are expected"
            )
        x = np.where(empty, np.nan, shapely.get_x(geoms))
        y = np.where(empty, np.nan, shapely.get_y(geoms))
    else:
        raise ConfigurationError(
            f"geometry column {name!r} of {what} holds {t}; expected WKB points (GeoParquet)"
        )
    x, y = _to_lonlat(x, y, crs, name)
    return x, y, np.asarray(empty, bool)


def _to_lonlat(x: NDArray[Any], y: NDArray[Any], crs: Any, name: str) -> tuple[Any, Any]:
    from pyproj import CRS, Transformer
    from pyproj.exceptions import CRSError

    if crs is None:
        return x, y  # GeoParquet's default: OGC:CRS84, lon/lat
    try:
        c = CRS.from_json_dict(dict(crs)) if isinstance(crs, Mapping) else CRS.from_user_input(crs)
    except (CRSError, TypeError) as exc:  # TypeError: a PROJJSON dict that is not JSON
        raise ConfigurationError(
            f"the CRS of geometry column {name!r} is not readable: {exc}"
        ) from None
    wgs84 = CRS.from_epsg(4326)
    if c.equals(wgs84, ignore_axis_order=True):
        return x, y  # GeoParquet coordinates are x = lon, y = lat whatever the axis order
    t = Transformer.from_crs(c, wgs84, always_xy=True)
    with np.errstate(invalid="ignore"):
        lon, lat = t.transform(x, y, errcheck=False)
    return np.asarray(lon, np.float64), np.asarray(lat, np.float64)


def _renamed(table: pa.Table) -> pa.Table:
    """Input columns whose names the output adds are kept as ``NAME_input``."""
    taken = set(ADDED) | {GEOMETRY}
    names = []
    for name in table.column_names:
        if name in taken or (len(name) == 4 and name[0] == "b" and name[1:].isdigit()):
            new = f"{name}_input"
            while new in table.column_names:
                new += "_"
            log.warning("input column %r kept as %r: the output adds its own %r", name, new, name)
            name = new
        names.append(name)
    return table.rename_columns(names)
