"""Batched point reads: the embedding of the pixel under each (lon, lat).

Points are located in vectorised steps (cell -> tile -> pixel), then every
point becomes two byte ranges (its ``bands`` embedding bytes and its scale),
ranges are coalesced and fetched concurrently (:mod:`.ranges`). A point
with no indexed tile, or with an invalid scale, is NaN, and
:func:`point_status` says which of those it was (a table of points carries
it per row). These functions are given the tables and byte sources they
need; they never open an index.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tessera_vz.core.errors import SourceChangedError, SourceUnavailableError, TileNotFoundError
from tessera_vz.core.geometry import cell_centre, project, utm_zone
from tessera_vz.core.table import TileLookup
from tessera_vz.reader.ranges import POINT_GAP, ZoneYear, gather, read, tile_ranges


@dataclass
class Located:
    """Where each point's pixel is; ``ok`` marks points that have one."""

    ok: NDArray[np.bool_]
    tile: NDArray[np.object_]
    row: NDArray[np.int64]
    col: NDArray[np.int64]
    zone: NDArray[np.int64]
    facts: dict[str, NDArray[Any]]


#: Why a point has a value or not, per row of a sampled table (:func:`point_status`).
OK = "ok"
NO_TILE = "no tile"  # a valid coordinate no indexed tile of the year covers
NO_DATA = "no data"  # covered, but the pixel's scale is invalid (no-data)
INVALID = "invalid coordinate"  # not finite, or outside lon [-180, 180] / lat [-90, 90]
EMPTY = "empty"  # the coordinate cell (or geometry) is missing
ERROR = "error"  # the tile could not be read (its source failed); the rest were read
STATUSES = (OK, NO_TILE, NO_DATA, INVALID, EMPTY, ERROR)

_FACTS = (
    "left", "top", "height", "width", "bands", "emb_chunk_rows", "scales_chunk_rows",
    "scales_ndim", "scales_descr", "source", "emb_path", "scales_path", "emb_offset",
    "scales_offset", "emb_checksum", "scales_checksum", "emb_size", "scales_size",
)  # fmt: skip


def as_points(lons: ArrayLike, lats: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Validate point arrays: same length, 1-D; NaN and out-of-range become no-data."""
    lon = np.atleast_1d(np.asarray(lons, dtype=np.float64))
    lat = np.atleast_1d(np.asarray(lats, dtype=np.float64))
    if lon.shape != lat.shape or lon.ndim != 1:
        raise ValueError(
            f"lons and lats must be 1-D and of equal length; got shapes {lon.shape} and {lat.shape}"
        )
    return lon, lat


def valid_coordinates(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Coordinates a point may be read at: finite, lon in [-180, 180], lat in [-90, 90]."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 180) & (np.abs(lat) <= 90)


def locate(
    table_of: Callable[[int], TileLookup | None],
    lons: ArrayLike,
    lats: ArrayLike,
    year: int,
    where: str = "the index",
    strict: bool = True,
) -> Located:
    """Find the tile and pixel of every point (vectorised, per zone and CRS).

    ``table_of(zone)`` gives the year's tiles table of a zone, or ``None``
    when the zone or year is not indexed. Raises :class:`TileNotFoundError`
    only when ``year`` is indexed in none of the zones the points fall in
    (unless ``strict`` is False: a batch of a table may fall there only);
    single missing tiles are no-data. Invalid coordinates are never located.
    """
    lon, lat = as_points(lons, lats)
    n = lon.size
    finite = valid_coordinates(lon, lat)
    clon = np.full(n, np.nan)
    clat = np.full(n, np.nan)
    clon[finite], clat[finite] = cell_centre(lon[finite], lat[finite])
    zone = np.zeros(n, np.int64)
    zone[finite] = utm_zone(clon[finite])
    loc = Located(
        ok=np.zeros(n, bool), tile=np.full(n, "", dtype=object), row=np.zeros(n, np.int64),
        col=np.zeros(n, np.int64), zone=zone, facts={},
    )  # fmt: skip
    facts: dict[str, list[Any]] = {}
    tables_seen = 0
    for z in np.unique(zone[finite]):
        table = table_of(int(z))
        if table is None:
            continue
        tables_seen += 1
        sel = np.flatnonzero(finite & (zone == z))
        names = [f"grid_{a:.2f}_{b:.2f}" for a, b in zip(clon[sel], clat[sel], strict=True)]
        pos = table.positions(names)
        have = pos >= 0
        sel, pos = sel[have], pos[have]
        cols = {k: table.cols[k][pos] for k in (*_FACTS, "epsg")}
        for code in np.unique(cols["epsg"]):
            m = cols["epsg"] == code
            e, nn = project(lon[sel[m]], lat[sel[m]], int(code))
            c = np.floor((e - cols["left"][m]) / 10.0).astype(np.int64)
            r = np.floor((cols["top"][m] - nn) / 10.0).astype(np.int64)
            inside = (r >= 0) & (r < cols["height"][m]) & (c >= 0) & (c < cols["width"][m])
            idx = sel[m][inside]
            loc.ok[idx] = True
            loc.row[idx] = r[inside]
            loc.col[idx] = c[inside]
            loc.tile[idx] = np.asarray(names, dtype=object)[have][m][inside]
            for k in _FACTS:
                facts.setdefault(k, []).append((idx, cols[k][m][inside]))
    if strict and tables_seen == 0 and finite.any():
        raise TileNotFoundError(
            f"year {year} is not indexed in UTM zone(s) {sorted(set(zone[finite].tolist()))} "
            f"of {where}"
        )
    for k, parts in facts.items():
        dtype = parts[0][1].dtype
        arr = np.zeros(n, dtype=dtype) if dtype.kind != "U" else np.full(n, "", dtype=object)
        for idx, vals in parts:
            arr[idx] = vals
        loc.facts[k] = arr
    return loc


async def read_located(
    sources: Mapping[int, ZoneYear], loc: Located, year: int, gap: int = POINT_GAP
) -> tuple[NDArray[np.int8], NDArray[np.float32], NDArray[np.bool_]]:
    """Raw embeddings ``(N, B)``, scales ``(N,)`` or ``(N, B)`` and the found mask.

    ``sources`` holds the byte source of each zone the located points fall in.
    """
    ok = np.flatnonzero(loc.ok)
    n = loc.ok.size
    if ok.size == 0:
        return np.zeros((n, 0), np.int8), np.full(n, np.nan, np.float32), loc.ok
    f = {k: v[ok] for k, v in loc.facts.items()}
    bands = np.unique(f["bands"])
    if bands.size != 1:
        raise ValueError(f"tiles hold different band counts {bands.tolist()}; read them separately")
    b = int(bands[0])
    per_band = np.unique(f["scales_ndim"]).tolist() == [3]
    rows, cols, names = loc.row[ok], loc.col[ok], loc.tile[ok]
    s_item = 4 * (b if per_band else 1)
    zones = loc.zone[ok]
    emb = np.zeros((n, b), np.int8)
    scale = np.full((n, b) if per_band else (n,), np.nan, np.float32)
    for z in np.unique(zones):
        m = zones == z
        idx = np.flatnonzero(m)
        source = sources[int(z)]
        what = f"reading {idx.size} points of {year} in zone {int(z)}"
        source.check(names[m], what)
        fm = {key: v[m] for key, v in f.items()}
        one = np.ones(idx.size, np.int64)
        e_want = tile_ranges("emb", names[m].tolist(), rows[m], cols[m], one, fm, b)
        s_want = tile_ranges("scales", names[m].tolist(), rows[m], cols[m], one, fm, s_item)
        (e_plan, e_blobs), (s_plan, s_blobs) = await asyncio.gather(
            read(source, e_want, gap, what), read(source, s_want, gap, what)
        )
        emb[ok[m]] = gather(e_plan, e_blobs, b, what).view(np.int8)
        descr = np.dtype(str(f["scales_descr"][idx[0]]))
        raw = gather(s_plan, s_blobs, s_item, what).view(descr).astype(np.float32)
        scale[ok[m]] = raw if per_band else raw[:, 0]
    return emb, scale, loc.ok


def years_list(year: int | Sequence[int]) -> tuple[list[int], bool]:
    """Normalise ``year`` (an int or a list) and say whether a time axis is wanted."""
    if isinstance(year, (int, np.integer)):
        return [int(year)], False
    years = [int(y) for y in year]
    if not years:
        raise ValueError("years must name at least one year")
    return years, True


def only(loc: Located, mask: NDArray[np.bool_]) -> Located:
    """``loc`` with only the points under ``mask`` located (the rest read as absent)."""
    return Located(loc.ok & mask, loc.tile, loc.row, loc.col, loc.zone, loc.facts)


async def read_isolated(
    sources: Mapping[int, ZoneYear], loc: Located, year: int, gap: int = POINT_GAP
) -> tuple[NDArray[np.int8], NDArray[np.float32], NDArray[np.bool_], dict[str, str]]:
    """:func:`read_located`, but a tile whose source fails fails only its own points.

    Everything is read at once; if that fails for a source reason, each tile
    is read on its own (concurrently) and the points of the tiles that still
    fail are left out of ``found``. Returns embeddings, scales, the found
    mask and ``{tile: reason}`` of the tiles that failed.
    """
    try:
        emb, scale, found = await read_located(sources, loc, year, gap)
        return emb, scale, found, {}
    except (SourceUnavailableError, SourceChangedError):
        pass
    names = np.unique(loc.tile[loc.ok]).tolist()
    parts = await asyncio.gather(
        *(read_located(sources, only(loc, loc.tile == name), year, gap) for name in names),
        return_exceptions=True,
    )
    n = loc.ok.size
    emb = np.zeros((n, 0), np.int8)
    scale = np.full(n, np.nan, np.float32)
    found = np.zeros(n, bool)
    failed: dict[str, str] = {}
    for name, part in zip(names, parts, strict=True):
        if isinstance(part, (SourceUnavailableError, SourceChangedError)):
            failed[name] = str(part)
            continue
        if isinstance(part, BaseException):
            raise part
        e, sc, ok = part
        if emb.shape[1] == 0:
            emb = np.zeros((n, e.shape[1]), np.int8)
            scale = np.full((n, *sc.shape[1:]), np.nan, np.float32)
        emb[ok], scale[ok] = e[ok], sc[ok]
        found |= ok
    return emb, scale, found, failed


def point_status(
    empty: NDArray[np.bool_],
    valid: NDArray[np.bool_],
    located: NDArray[np.bool_],
    has_data: NDArray[np.bool_],
    failed: NDArray[np.bool_] | None = None,
) -> NDArray[np.object_]:
    """Why each point has a value or not (one of :data:`STATUSES`), first reason first.

    ``empty``: the coordinate was missing; ``valid``: it was a coordinate
    (:func:`valid_coordinates`); ``located``: an indexed tile covers it;
    ``has_data``: its value has at least one finite band (a valid scale);
    ``failed``: its tile's source could not be read.
    """
    status = np.full(empty.size, OK, dtype=object)
    status[~has_data] = NO_DATA
    if failed is not None:
        status[failed] = ERROR
    status[~located] = NO_TILE
    status[~valid] = INVALID
    status[empty] = EMPTY
    return status
