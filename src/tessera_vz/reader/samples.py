"""Sample points from an open index: arrays of embeddings, or a training table.

:meth:`~tessera_vz.reader.store.TesseraStore.sample` turns a table of
observations (an Arrow table, a pandas or geopandas frame; the coordinates
are found by :mod:`.point_columns`) into one row per point and year that an
ML pipeline can join back to its labels: every input column kept,
``point_id`` (the 0-based input row), ``year``, ``status`` (why a row has
values or not: :data:`~tessera_vz.reader.points.STATUSES`), the ``tile``,
``row`` and ``col`` of the pixel read, ``b000``..``b127`` (float32, null
unless the status is ``ok``), and a point ``geometry`` in EPSG:4326 (WKB),
described by GeoParquet 1.1 ``geo`` metadata so that writing the table with
``pyarrow.parquet.write_table`` gives a file geopandas, DuckDB and GDAL read
as points.

The orchestration: each batch of points is located per year
(:func:`~tessera_vz.reader.pixels.locate_pixels`), every year of it read
concurrently (a tile whose source fails fails only its points), and shaped
into rows (:func:`batch_table`). :func:`point_values` is the same read for
``point``/``points``, as plain arrays. The zone-years come from
:class:`~tessera_vz.reader.zone_year.ZoneYears`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from tessera_vz.core.coords import valid_lonlat_mask
from tessera_vz.core.dataset import DATASET_KEYS
from tessera_vz.core.geoparquet import geo_metadata as parquet_geo
from tessera_vz.core.loop import sync
from tessera_vz.core.quantisation import dequantise
from tessera_vz.reader.pixels import Located, locate_pixels
from tessera_vz.reader.point_columns import GEOMETRY, PointsInput
from tessera_vz.reader.point_groups import zone_groups
from tessera_vz.reader.point_rule import reachable_zones
from tessera_vz.reader.points import (
    EMPTY,
    INVALID,
    NO_YEAR,
    YEAR_NOT_INDEXED,
    point_status,
    read_isolated,
    years_list,
)
from tessera_vz.reader.range_fetch import ByteSource
from tessera_vz.reader.range_plan import POINT_GAP
from tessera_vz.reader.zone_year import ZoneYears

log = logging.getLogger(__name__)

#: Points read at a time by :func:`sample_batches` (values of a batch:
#: 100,000 x 128 float32 = 51 MB per year).
SAMPLE_BATCH = 100_000
#: Schema metadata keys of the provenance (as the ``tessera:*`` attributes of Datasets).
PROVENANCE_KEYS = (
    "tessera:versions", "tessera:snapshots", "tessera:store", "tessera:years", *DATASET_KEYS,
)  # fmt: skip


def band_names(bands: int) -> list[str]:
    """``b000``..: the band columns, named as the bands of region GeoTIFFs."""
    return [f"b{b:03d}" for b in range(bands)]


def point_wkb(
    lon: NDArray[np.float64], lat: NDArray[np.float64], mask: NDArray[np.bool_]
) -> pa.Array:
    """WKB points (null where ``mask`` is False)."""
    import shapely

    geoms = np.full(lon.size, None, dtype=object)
    geoms[mask] = shapely.points(lon[mask], lat[mask])
    return pa.array(shapely.to_wkb(geoms, output_dimension=2), pa.binary())


def geometry_field() -> pa.Field:
    """The point column, also tagged as a GeoArrow WKB array in OGC:CRS84 (lon, lat).

    GeoParquet readers go by the file's ``geo`` metadata (which leaves the
    CRS to its CRS84 default); the field's GeoArrow extension metadata lets
    Arrow-native tools (``GeoDataFrame.from_arrow``, lonboard) see the
    geometry of an in-memory table too. GeoArrow has no default CRS, so it is
    named here: CRS84, the longitude-first WGS 84 the coordinates are in.
    """
    from pyproj import CRS

    meta = {"crs": CRS.from_user_input("OGC:CRS84").to_json_dict()}
    return pa.field(GEOMETRY, pa.binary(), metadata={
        "ARROW:extension:name": "geoarrow.wkb", "ARROW:extension:metadata": json.dumps(meta),
    })  # fmt: skip


def geo_metadata(inp: PointsInput) -> dict[str, Any]:
    """GeoParquet 1.1 ``geo`` metadata of the output's point column (lon/lat, with its bbox)."""
    ok = valid_lonlat_mask(inp.lon, inp.lat) & ~inp.empty
    bbox = None
    if ok.any():
        bbox = [float(inp.lon[ok].min()), float(inp.lat[ok].min()),
                float(inp.lon[ok].max()), float(inp.lat[ok].max())]  # fmt: skip
    return parquet_geo(["Point"], bbox, column=GEOMETRY)


@dataclass
class YearSample:
    """What one year gave a batch of points: status, pixel and values per point.

    ``year`` is one year for every point, or each point's own (0: none).
    """

    year: int | NDArray[np.int64]
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
    geometry = point_wkb(lon, lat, valid_lonlat_mask(lon, lat) & ~inp.empty[start:stop])
    parts = []
    for s in samples:
        ok = s.status == "ok"
        cols: dict[str, pa.Array | pa.ChunkedArray] = {
            name: kept.column(name) for name in kept.column_names
        }
        cols["point_id"] = pa.array(np.arange(start, stop, dtype=np.int64))
        years = np.broadcast_to(np.asarray(s.year, np.int64), (n,))
        cols["year"] = pa.array(years.astype(np.int16), mask=years == 0)
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


def sample_batches(
    zone_years: ZoneYears,
    inp: PointsInput,
    years: int | Sequence[int] | None,
    *,
    batch_size: int = SAMPLE_BATCH,
    progress: Callable[[int], None] | None = None,
) -> Iterator[pa.Table]:
    """The rows of ``TesseraStore.sample``, batch by batch (without the file metadata).

    ``years=None``: each row is read in its own year (``inp.year``), one
    row per input row; a row whose year is missing, or indexed in no zone,
    is not read and says so in its status (never another year's value).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    ys = _years_read(zone_years, inp, years)
    bands = zone_years.bands(ys or zone_years.years())
    for start in range(0, inp.size, batch_size):
        stop = min(start + batch_size, inp.size)
        lon, lat = inp.lon[start:stop], inp.lat[start:stop]
        empty = inp.empty[start:stop]
        own = None if years is not None or inp.year is None else inp.year[start:stop]
        # Each year's points (all of them, or the rows of that year).
        parts = [np.ones(stop - start, bool) if own is None else own == y for y in ys]
        samples = _read_batch(zone_years, lon, lat, empty, ys, parts)
        if own is not None:
            done = [m for m in parts if m.any()]
            samples = [_own_years(own, empty, valid_lonlat_mask(lon, lat), done, samples, bands)]
        yield batch_table(inp, start, stop, samples, bands)
        if progress is not None:
            progress(stop - start)


def _years_read(
    zone_years: ZoneYears, inp: PointsInput, years: int | Sequence[int] | None
) -> list[int]:
    """The years a sample reads: those asked, else the indexed years of the rows' own years."""
    if years is not None:
        return years_list(years)[0]
    if inp.year is None:
        raise TypeError("give years=… (an int or a list of years), or a year column")
    indexed = set(zone_years.years())
    return sorted({int(y) for y in np.unique(inp.year)} & indexed)


def _own_years(
    own: NDArray[np.int64],
    empty: NDArray[np.bool_],
    valid: NDArray[np.bool_],
    masks: Sequence[NDArray[np.bool_]],
    samples: Sequence[YearSample],
    bands: int,
) -> YearSample:
    """One sample of a batch whose rows each chose their year: the reads of each year merged."""
    n = own.size
    status = np.full(n, YEAR_NOT_INDEXED, dtype=object)
    status[own == 0] = NO_YEAR
    status[~valid] = INVALID
    status[empty] = EMPTY
    tile = np.full(n, None, dtype=object)
    row, col = np.zeros(n, np.int64), np.zeros(n, np.int64)
    located = np.zeros(n, bool)
    values = np.full((n, bands), np.nan, np.float32)
    for m, s in zip(masks, samples, strict=True):
        status[m], tile[m], row[m], col[m], located[m] = s.status, s.tile, s.row, s.col, s.located
        if s.values.shape[1] == bands:
            values[m] = s.values
    return YearSample(own, status, tile, row, col, located, values)


def empty_sample(
    zone_years: ZoneYears, inp: PointsInput, years: int | Sequence[int] | None
) -> pa.Table:
    """A table of the sampled columns and no rows (for input without points)."""
    return empty_table(inp, zone_years.bands(_years_read(zone_years, inp, years) or
                                             zone_years.years()))  # fmt: skip


def sample_provenance(
    zone_years: ZoneYears, inp: PointsInput, years: int | Sequence[int] | None
) -> dict[str, str]:
    """Provenance of a sampled table: the versions it reads, the index, the years.

    Known before any pixel is read: the zone-years are those the points
    may be read from (their cells' zones, and the neighbour zone of points
    near a zone boundary) in which the year is indexed (its branch, tag or
    pinned snapshot exists: each zone's repository info says so, no table is
    loaded), so a pinned version that does not exist fails here, and a
    writer can put the provenance in the file's schema up front.
    """
    ys = _years_read(zone_years, inp, years)
    valid = valid_lonlat_mask(inp.lon, inp.lat) & ~inp.empty
    zones = reachable_zones(inp.lon[valid]) if valid.any() else []
    read = zone_years.indexed([(z, y) for y in ys for z in zones])
    return {
        **zone_years.provenance(read),
        "tessera:store": zone_years.root,
        "tessera:years": " ".join(map(str, ys)),
    }


def _read_batch(
    zone_years: ZoneYears,
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
    empty: NDArray[np.bool_],
    ys: Sequence[int],
    parts: Sequence[NDArray[np.bool_]],
) -> list[YearSample]:
    """Read a batch: one sample per year whose part (``parts``, the rows it reads) has rows.

    The points go :data:`~.point_groups.GROUP_ZONES` zones (of their cells) at a time: the
    tables of a group are loaded together (:meth:`ZoneYears.prepare`), every
    year of the group read concurrently, then the next group, so a batch
    spread over the globe holds a few zones' tables at once, not sixty.
    """
    wanted = [m for m in parts if m.any()]
    years = [y for y, m in zip(ys, parts, strict=True) if m.any()]
    pieces: list[list[tuple[NDArray[np.intp], YearSample]]] = [[] for _ in years]
    for mine in zone_groups(lon, valid_lonlat_mask(lon, lat) & ~empty):
        todo = [(k, np.flatnonzero(m & mine)) for k, m in enumerate(wanted)]
        todo = [(k, idx) for k, idx in todo if idx.size]
        # Tables are loaded (sync) before the reads of every year run together.
        plans = [_sample_plan(zone_years, lon[idx], lat[idx], empty[idx], years[k])
                 for k, idx in todo]  # fmt: skip

        async def read_years(plans: list[Any] = plans) -> list[YearSample]:
            return list(await asyncio.gather(*(_sample_year(*p) for p in plans)))

        for (k, idx), got in zip(todo, sync(read_years()), strict=True):
            pieces[k].append((idx, got))
    return [_merged(m, y, p) for m, y, p in zip(wanted, years, pieces, strict=True)]


def _merged(
    part: NDArray[np.bool_], year: int, pieces: Sequence[tuple[NDArray[np.intp], YearSample]]
) -> YearSample:
    """One year's sample of a batch's ``part`` from the samples of its zone groups.

    ``pieces`` hold each group's rows (indices into the batch) and sample.
    """
    at = np.flatnonzero(part)
    if len(pieces) == 1 and np.array_equal(pieces[0][0], at):
        return pieces[0][1]
    where = np.empty(part.size, np.intp)
    where[at] = np.arange(at.size)
    n = at.size
    bands = max(p.values.shape[1] for _, p in pieces)
    out = YearSample(
        year, np.full(n, None, dtype=object), np.full(n, None, dtype=object),
        np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, bool),
        np.full((n, bands), np.nan, np.float32),
    )  # fmt: skip
    for idx, p in pieces:
        i = where[idx]
        out.status[i], out.tile[i], out.row[i], out.col[i] = p.status, p.tile, p.row, p.col
        out.located[i] = p.located
        if p.values.shape[1] == bands:
            out.values[i] = p.values
    return out


def _sample_plan(
    zone_years: ZoneYears,
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
    empty: NDArray[np.bool_],
    year: int,
) -> tuple[Located, dict[int, ByteSource], NDArray[np.bool_], NDArray[np.bool_], int]:
    """Locate one year of a batch: where each point is, and the byte sources to read."""
    valid = valid_lonlat_mask(lon, lat) & ~empty
    zone_years.prepare_points(np.where(valid, lon, np.nan), year)
    rects = zone_years.rects_or_none(year)
    loc = locate_pixels(rects, np.where(valid, lon, np.nan), np.where(valid, lat, np.nan),
                        year, zone_years.root, strict=False)  # fmt: skip
    located = np.unique(loc.zone[loc.ok]).tolist()
    sources = {z: zone_years.get(z, year).source for z in located}
    return loc, sources, empty, valid_lonlat_mask(lon, lat), int(year)


async def _sample_year(
    loc: Located,
    sources: dict[int, ByteSource],
    empty: NDArray[np.bool_],
    valid: NDArray[np.bool_],
    year: int,
) -> YearSample:
    """Read one located year of a batch, and say why each point has a value or not."""
    n = loc.ok.size
    values = np.full((n, 0), np.nan, np.float32)
    failed = np.zeros(n, bool)
    if loc.ok.any():
        emb, scale, found, broken = await read_isolated(sources, loc, year, POINT_GAP)
        for name, reason in broken.items():
            log.warning("year %d: tile %s could not be read: %s", year, name, reason)
        failed = loc.ok & ~found
        if emb.shape[1]:
            values = dequantise(emb, scale)
            values[~found] = np.nan
    has = np.isfinite(values).any(axis=1) if values.shape[1] else np.zeros(n, bool)
    status = point_status(empty, valid, loc.ok, has, failed)
    return YearSample(year, status, loc.tile, loc.row, loc.col, loc.ok, values)
