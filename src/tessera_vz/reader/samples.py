"""Points as a training table: the input's rows, a status and an embedding per year.

:meth:`~tessera_vz.reader.store.TesseraStore.sample` turns a table of
observations (an Arrow table, a pandas or geopandas frame) into one row per
point and year that an ML pipeline can join back to its labels: every input
column kept, ``point_id`` (the 0-based input row), ``year``, ``status`` (why
a row has values or not: :data:`~tessera_vz.reader.points.STATUSES`), the
``tile``, ``row`` and ``col`` of the pixel read, ``b000``..``b127`` (float32,
null unless the status is ``ok``), and a point ``geometry`` in EPSG:4326
(WKB), described by GeoParquet 1.1 ``geo`` metadata so that writing the
table with ``pyarrow.parquet.write_table`` gives a file geopandas, DuckDB and
GDAL read as points.

This module only shapes tables (no I/O): where the coordinates come from
(:func:`points_input`), and the rows of one batch (:func:`batch_table`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.reader.points import valid_coordinates

log = logging.getLogger(__name__)

GEOPARQUET_VERSION = "1.1.0"
#: Column names taken as longitude / latitude when none is named (case-insensitive).
LON_NAMES = ("lon", "longitude", "lng")
LAT_NAMES = ("lat", "latitude")
#: The name of the output's point geometry column.
GEOMETRY = "geometry"
#: Columns every sampled row gets, before the bands and the geometry.
ADDED = ("point_id", "year", "status", "tile", "row", "col")
#: Schema metadata keys of the provenance (as the ``tessera:*`` attributes of Datasets).
PROVENANCE_KEYS = ("tessera:versions", "tessera:snapshots", "tessera:store", "tessera:years")


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


def band_names(bands: int) -> list[str]:
    """``b000``..: the band columns, named as the bands of region GeoTIFFs."""
    return [f"b{b:03d}" for b in range(bands)]


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

    if crs is None:
        return x, y  # GeoParquet's default: OGC:CRS84, lon/lat
    try:
        c = CRS.from_json_dict(dict(crs)) if isinstance(crs, Mapping) else CRS.from_user_input(crs)
    except Exception as exc:  # pyproj raises CRSError and others
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


def point_wkb(
    lon: NDArray[np.float64], lat: NDArray[np.float64], mask: NDArray[np.bool_]
) -> pa.Array:
    """WKB points (null where ``mask`` is False)."""
    import shapely

    geoms = np.full(lon.size, None, dtype=object)
    geoms[mask] = shapely.points(lon[mask], lat[mask])
    return pa.array(shapely.to_wkb(geoms, output_dimension=2), pa.binary())


def geometry_field() -> pa.Field:
    """The point column, also tagged as a GeoArrow WKB array in EPSG:4326.

    GeoParquet readers go by the file's ``geo`` metadata; the field's GeoArrow
    extension metadata lets Arrow-native tools (``GeoDataFrame.from_arrow``,
    lonboard) see the geometry of an in-memory table too.
    """
    from pyproj import CRS

    meta = {"crs": CRS.from_epsg(4326).to_json_dict()}
    return pa.field(GEOMETRY, pa.binary(), metadata={
        "ARROW:extension:name": "geoarrow.wkb", "ARROW:extension:metadata": json.dumps(meta),
    })  # fmt: skip


def geo_metadata(inp: PointsInput) -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata of the output's point column (EPSG:4326, with its bbox)."""
    from pyproj import CRS

    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": ["Point"],
        "crs": CRS.from_epsg(4326).to_json_dict(),
        "edges": "planar",
    }
    ok = valid_coordinates(inp.lon, inp.lat) & ~inp.empty
    if ok.any():
        column["bbox"] = [float(inp.lon[ok].min()), float(inp.lat[ok].min()),
                          float(inp.lon[ok].max()), float(inp.lat[ok].max())]  # fmt: skip
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": GEOMETRY,
        "columns": {GEOMETRY: column},
    }


@dataclass
class YearSample:
    """What one year gave a batch of points: status, pixel and values per point."""

    year: int
    status: NDArray[np.object_]
    tile: NDArray[np.object_]
    row: NDArray[np.int64]
    col: NDArray[np.int64]
    located: NDArray[np.bool_]
    values: NDArray[np.float32]  # (n, bands)


def batch_table(
    inp: PointsInput, start: int, stop: int, samples: Sequence[YearSample], bands: int
) -> pa.Table:
    """Rows ``start:stop`` of the input, one per point and year (years of a point together)."""
    kept = inp.table.slice(start, stop - start)
    n = stop - start
    lon, lat = inp.lon[start:stop], inp.lat[start:stop]
    geometry = point_wkb(lon, lat, valid_coordinates(lon, lat) & ~inp.empty[start:stop])
    parts = []
    for s in samples:
        ok = s.status == "ok"
        cols: dict[str, pa.Array | pa.ChunkedArray] = {
            name: kept.column(name) for name in kept.column_names
        }
        cols["point_id"] = pa.array(np.arange(start, stop, dtype=np.int64))
        cols["year"] = pa.array(np.full(n, s.year, np.int16))
        cols["status"] = pa.array(s.status.tolist(), pa.string())
        tiles = np.asarray(s.tile, dtype=object)
        cols["tile"] = pa.array(tiles, pa.string(), mask=~s.located)
        cols["row"] = pa.array(s.row.astype(np.int32), mask=~s.located)
        cols["col"] = pa.array(s.col.astype(np.int32), mask=~s.located)
        values = s.values if s.values.shape[1] == bands else np.full((n, bands), np.nan, np.float32)
        for b, name in enumerate(band_names(bands)):
            cols[name] = pa.array(np.ascontiguousarray(values[:, b]), pa.float32(), mask=~ok)
        cols[GEOMETRY] = geometry
        table = pa.table(cols)
        i = table.schema.get_field_index(GEOMETRY)
        parts.append(table.cast(table.schema.set(i, geometry_field())))
    table = pa.concat_tables(parts)
    if len(samples) > 1:  # point 0's years, then point 1's, ...
        order = np.arange(n * len(samples)).reshape(len(samples), n).T.ravel()
        table = table.take(pa.array(order))
    return table


def empty_table(inp: PointsInput, bands: int) -> pa.Table:
    """No rows, the columns of :func:`batch_table` (the schema of a table without points)."""
    none = np.zeros(0, dtype=object)
    nothing = YearSample(0, none, none, np.zeros(0, np.int64), np.zeros(0, np.int64),
                         np.zeros(0, bool), np.zeros((0, bands), np.float32))  # fmt: skip
    return batch_table(inp, 0, 0, [nothing], bands)


def with_metadata(
    table: pa.Table, geo: Mapping[str, Any], provenance: Mapping[str, str] | None = None
) -> pa.Table:
    """``table`` with the ``geo`` metadata and the provenance keys in its schema."""
    meta = dict(table.schema.metadata or {})
    meta[b"geo"] = json.dumps(geo).encode()
    for key, value in (provenance or {}).items():
        meta[key.encode()] = str(value).encode()
    return table.replace_schema_metadata(meta)
