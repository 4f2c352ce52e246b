"""Where points fall: the tile and pixel under each (lon, lat), cell -> tile -> pixel.

A point's 0.1-degree cell names its tile (``grid_{lon}_{lat}``) and its UTM
zone; the zone-year's tiles table (a :class:`~tessera_vz.core.table.TileLookup`)
says whether that tile is indexed and where its pixels lie; projecting the
point into the tile's CRS gives the row and column. :func:`locate_pixels`
does this for many points at once (vectorised, per zone and CRS);
:func:`locate_tile` and :func:`locate_pixel` for one point, with the precise
reason when there is none. Pure lookups: the tables are given, no bytes are
read (reading is :mod:`.points`'s job).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tessera_vz.core.coords import check_lonlat, valid_lonlat_mask
from tessera_vz.core.errors import TileNotFoundError
from tessera_vz.core.geometry import cell_centre, project, utm_zone
from tessera_vz.core.layout import tile_name
from tessera_vz.core.table import TileLookup


@dataclass
class Located:
    """Where each point's pixel is; ``ok`` marks points that have one."""

    ok: NDArray[np.bool_]
    tile: NDArray[np.object_]
    row: NDArray[np.int64]
    col: NDArray[np.int64]
    zone: NDArray[np.int64]
    facts: dict[str, NDArray[Any]]


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


def locate_pixels(
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
    finite = valid_lonlat_mask(lon, lat)
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


def only(loc: Located, mask: NDArray[np.bool_]) -> Located:
    """``loc`` with only the points under ``mask`` located (the rest read as absent)."""
    return Located(loc.ok & mask, loc.tile, loc.row, loc.col, loc.zone, loc.facts)


@dataclass(frozen=True)
class TileLocation:
    """Where a tile's pixel is: the tile row facts plus pixel row/col."""

    zone: int
    year: int
    name: str
    row: int
    col: int
    facts: dict[str, Any]


def locate_tile(
    lookup_of: Callable[[int], TileLookup], lon: float, lat: float, year: int
) -> tuple[int, str, dict[str, Any]]:
    """The zone, name and facts of the tile covering a point.

    ``lookup_of(zone)`` gives the year's tiles table of a zone, and raises
    :class:`TileNotFoundError` when the zone or year is not indexed.
    """
    check_lonlat(lon, lat)
    clon, clat = (float(v) for v in cell_centre(lon, lat))
    zone = int(utm_zone(clon))
    name = tile_name(clon, clat)
    facts = lookup_of(zone).row(name)
    if facts is None:
        raise TileNotFoundError(
            f"no tile {name} (covering lon={lon}, lat={lat}) indexed for {year} in zone {zone}"
        )
    return zone, name, facts


def locate_pixel(
    lookup_of: Callable[[int], TileLookup], lon: float, lat: float, year: int
) -> TileLocation:
    """The tile and pixel (row, col) holding a point (see :func:`locate_tile`)."""
    zone, name, facts = locate_tile(lookup_of, lon, lat, year)
    e, n = project(lon, lat, int(facts["epsg"]))
    col = int(np.floor((float(e) - facts["left"]) / 10.0))
    row = int(np.floor((facts["top"] - float(n)) / 10.0))
    if not (0 <= row < facts["height"] and 0 <= col < facts["width"]):
        raise TileNotFoundError(
            f"lon={lon}, lat={lat} falls outside the pixels of tile {name} "
            f"(row {row}, col {col} of {facts['height']}x{facts['width']})"
        )
    return TileLocation(zone, int(year), name, row, col, facts)
