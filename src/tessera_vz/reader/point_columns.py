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


#: Column names taken as longitude / latitude when none is named (case-insensitive);
#: ``decimalLongitude``/``decimalLatitude`` are Darwin Core's (GBIF downloads).
LON_NAMES = ("lon", "longitude", "lng", "decimallongitude")
LAT_NAMES = ("lat", "latitude", "decimallatitude")
#: Text columns taken as WKT point geometries when no lon/lat column is found.
WKT_NAMES = ("geometry", "wkt", "geom", "the_geom")
#: Column name taken as each row's year when none is named (case-insensitive; Darwin Core's).
YEAR_NAMES = ("year",)
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
    #: Each row's own year (0 where its cell is missing or not a year), when read
    #: from a column; ``None`` when the years are given for every row.
    year: NDArray[np.int64] | None = None
    #: The column the years came from, for messages.
    year_source: str | None = None
    #: With ``areas=True``: each row's (multi)polygon, in ``areas_crs``, ``None`` for a point
    #: row (whose ``lon``/``lat`` are NaN for an area row); ``None`` when no row is an area.
    areas: NDArray[Any] | None = None
    #: The CRS of ``areas`` (``None``: lon/lat).
    areas_crs: Any = None

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
    year: str | None = None,
    what: str = "the points",
    areas: bool = False,
) -> PointsInput:
    """Where each point is, from lon/lat columns or a point geometry column.

    ``points`` is a ``pyarrow.Table``, a pandas ``DataFrame``, a geopandas
    ``GeoDataFrame`` (its active geometry is used, in its CRS) or anything
    exposing the Arrow C stream. Coordinates come from ``geometry`` (a WKB or
    GeoArrow point column in ``crs``, default EPSG:4326 / OGC:CRS84) when
    given, else from the ``lon`` and ``lat`` columns, which default to a
    column named ``lon``/``longitude``/``lng``/``decimalLongitude`` and
    ``lat``/``latitude``/``decimalLatitude`` (in any case), else from a text
    column of WKT points named ``geometry``/``wkt``/``geom``/``the_geom``.
    ``x``/``y`` are never taken for lon/lat: they are as often metres in a
    projected CRS as degrees, so name them.

    ``year`` names a column holding each row's own year (an integer, or
    text such as ``"2024"``), kept in ``PointsInput.year`` with 0 where a
    cell is missing or not a four-digit year.

    ``areas=True`` also accepts polygon and multipolygon geometries (training
    areas: ``tessera-vz classify``), kept in ``PointsInput.areas``; without
    it a polygon is refused, as points are sampled one pixel each.

    Raises
    ------
    ConfigurationError
        A named column is missing, no lon/lat column is found (the message
        lists the columns there are), or a column cannot hold coordinates.
    """
    table, geometry, crs = _as_table(points, geometry, crs)
    if geometry is None and lon is None and lat is None:
        geometry = _wkt_column(table)
    if geometry is not None and lon is None and lat is None:
        if geometry not in table.column_names:
            raise ConfigurationError(
                f"{what} have no geometry column {geometry!r}; columns: {table.column_names}"
            )
        x, y, empty, shapes = _from_geometry(table.column(geometry), geometry, crs, what, areas)
        kept = table.drop_columns([geometry])
        source = f"geometry column {geometry!r}"
    else:
        lon_col = _column(table, lon, LON_NAMES, "--lon", "longitude", what)
        lat_col = _column(table, lat, LAT_NAMES, "--lat", "latitude", what)
        x, ex = _numbers(table.column(lon_col), lon_col, what)
        y, ey = _numbers(table.column(lat_col), lat_col, what)
        empty = ex | ey
        kept, shapes = table, None
        source = f"columns {lon_col!r}/{lat_col!r}"
    inp = PointsInput(_renamed(kept), x, y, empty, source)
    if shapes is not None:
        inp.areas, inp.areas_crs = shapes, crs
    if year is not None:
        if year not in table.column_names:
            raise ConfigurationError(
                f"{what} have no year column {year!r}; columns: {table.column_names}"
            )
        inp.year, inp.year_source = _years(table.column(year), year, what), year
    return inp


def own_year_column(points: Any, years: Any, year_column: str | None) -> str | None:
    """The column each row's year comes from: ``year_column``, or without ``years`` a
    column named ``year``; ``None`` when ``years`` are given for every row."""
    if years is not None and year_column is not None:
        raise ConfigurationError(
            f"give years ({years!r}) or year_column ({year_column!r}), not both"
        )
    return year_column or (year_column_of(points) if years is None else None)


def year_column_of(points: Any) -> str | None:
    """The column of ``points`` named ``year`` in any case, if there is one."""
    names = getattr(points, "column_names", None) or [str(c) for c in points.columns]
    lower = {c.lower(): c for c in names}
    return next((lower[n] for n in YEAR_NAMES if n in lower), None)


def _years(col: pa.ChunkedArray, name: str, what: str) -> NDArray[np.int64]:
    """A year column as int64, 0 where a cell is missing, not an integer or not 1000-9999."""
    t = col.type
    if pa.types.is_null(t):
        return np.zeros(len(col), np.int64)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = [(v or "").strip() for v in col.to_pylist()]
        values = np.array([float(v) if v.isdigit() else np.nan for v in text], np.float64)
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        values = pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)
        values = np.where(col.is_null().to_numpy(zero_copy_only=False), np.nan, values)
    else:
        raise ConfigurationError(
            f"year column {name!r} of {what} holds {t}; expected years such as 2024"
        )
    with np.errstate(invalid="ignore"):
        ok = (
            np.isfinite(values) & (values == np.round(values)) & (values >= 1000) & (values <= 9999)
        )
    return np.where(ok, np.nan_to_num(values), 0).astype(np.int64)


def _wkt_column(table: pa.Table) -> str | None:
    """A text column named like a geometry (``geometry``, ``wkt``, ..), if no lon/lat is there."""
    lower = {c.lower(): c for c in table.column_names}
    if any(n in lower for n in LON_NAMES) or any(n in lower for n in LAT_NAMES):
        return None
    for name in WKT_NAMES:
        t = table.schema.field(lower[name]).type if name in lower else None
        if t is not None and (pa.types.is_string(t) or pa.types.is_large_string(t)):
            return lower[name]
    return None


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
    col: pa.ChunkedArray, name: str, crs: Any, what: str, areas: bool = False
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any] | None]:
    """Point coordinates of a WKB or GeoArrow column, in EPSG:4326 lon/lat, and with
    ``areas`` the polygon rows' geometries (``None`` when there is none)."""
    import shapely

    t = col.type
    shapes = None
    if pa.types.is_struct(t) and {"x", "y"} <= {t.field(i).name for i in range(t.num_fields)}:
        empty = col.is_null().to_numpy(zero_copy_only=False)
        x = pc.struct_field(col, "x").to_numpy(zero_copy_only=False).astype(np.float64)
        y = pc.struct_field(col, "y").to_numpy(zero_copy_only=False).astype(np.float64)
    elif any(is_(t) for is_ in (pa.types.is_binary, pa.types.is_large_binary,
                                 pa.types.is_string, pa.types.is_large_string)):  # fmt: skip
        geoms = _geometries(col, name, what)
        empty = shapely.is_missing(geoms) | shapely.is_empty(geoms)
        kinds = shapely.get_type_id(geoms)
        polygon = ~empty & np.isin(kinds, (3, 6)) & areas  # Polygon, MultiPolygon
        if polygon.any():
            shapes = np.asarray(geoms, dtype=object).copy()
            shapes[~polygon] = None
        bad = np.flatnonzero(~empty & (kinds != 0) & ~polygon)
        if bad.size:
            kind = shapely.get_type_id(geoms[bad[0]])
            names = {1: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString",
                     6: "MultiPolygon", 7: "GeometryCollection"}  # fmt: skip
            raise ConfigurationError(
                f"geometry column {name!r} of {what} holds a {names.get(int(kind), 'non-point')} "
                f"in row {int(bad[0])} ({bad.size} such rows); points are sampled one pixel "
                "each: give points, or read an area with `tessera-vz region --region-file`"
                + (" (training areas are polygons)" if areas else "")
            )
        point = ~empty & ~polygon
        only = np.asarray(geoms, dtype=object).copy()
        only[~point] = None
        x = np.where(point, shapely.get_x(only), np.nan)
        y = np.where(point, shapely.get_y(only), np.nan)
    else:
        raise ConfigurationError(
            f"geometry column {name!r} of {what} holds {t}; expected WKB points (GeoParquet) "
            "or WKT text"
        )
    x, y = _to_lonlat(x, y, crs, name)
    return x, y, np.asarray(empty, bool), shapes


def _geometries(col: pa.ChunkedArray, name: str, what: str) -> NDArray[Any]:
    """Shapely geometries of a WKB (binary) or WKT (text) column; a blank cell is missing."""
    import shapely

    values = col.to_numpy(zero_copy_only=False)
    try:
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            return np.asarray(shapely.from_wkb(values, on_invalid="raise"))
        text = np.array([v if v is not None and v.strip() else None for v in values], object)
        return np.asarray(shapely.from_wkt(text, on_invalid="raise"))
    except shapely.errors.GEOSException as exc:
        kind = "WKB" if pa.types.is_binary(col.type) else "WKT"
        raise ConfigurationError(
            f"geometry column {name!r} of {what} holds something that is not {kind}: {exc}"
        ) from None


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
