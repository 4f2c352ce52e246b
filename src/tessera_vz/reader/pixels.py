"""Where points fall: the tile and pixel each (lon, lat) reads.

A point reads the pixel ``region`` returns at its place on its zone's 10 m
lattice, from the tile the region's ownership rule picks
(:mod:`.point_rule`): its cell's tile where that covers the pixel, else the
neighbour that does. :func:`locate_pixels` does this for many points at
once (vectorised, per zone); :func:`location` turns one located point into
a :class:`TileLocation`, or the precise reason there is none. Pure lookups:
the tile rectangles are given, no bytes are read (reading is
:mod:`.points`'s job).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tessera_vz.core.coords import valid_lonlat_mask
from tessera_vz.core.errors import TileNotFoundError
from tessera_vz.core.geometry import cell_centre
from tessera_vz.core.layout import tile_name
from tessera_vz.reader.point_rule import point_pixels
from tessera_vz.reader.windows import TileRects


@dataclass
class Located:
    """Where each point's pixel is; ``ok`` marks points that have one."""

    ok: NDArray[np.bool_]
    tile: NDArray[np.object_]
    row: NDArray[np.int64]
    col: NDArray[np.int64]
    zone: NDArray[np.int64]
    facts: dict[str, NDArray[Any]]


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
    rects_of: Callable[[int], TileRects | None],
    lons: ArrayLike,
    lats: ArrayLike,
    year: int,
    where: str = "the index",
    strict: bool = True,
) -> Located:
    """Find the tile and pixel of every point (vectorised, per zone).

    The pixel is the one ``region`` returns at the point on its zone's
    lattice (:mod:`.point_rule`). ``rects_of(zone)`` gives the year's tile
    rectangles of a zone, or ``None`` when the zone or year is not indexed.
    Raises :class:`TileNotFoundError` only when ``year`` is indexed in none
    of the zones the points could be read from (unless ``strict`` is False:
    a batch of a table may fall there only); single missing tiles are
    no-data. Invalid coordinates are never located.
    """
    lon, lat = as_points(lons, lats)
    n = lon.size
    finite = valid_lonlat_mask(lon, lat)
    seen: dict[int, TileRects] = {}

    def recorded(zone: int) -> TileRects | None:
        found = rects_of(zone)
        if found is not None:
            seen[zone] = found
        return found

    picked = point_pixels(recorded, np.where(finite, lon, np.nan), np.where(finite, lat, np.nan))
    ok = picked.tile >= 0
    loc = Located(
        ok=ok, tile=np.full(n, "", dtype=object), row=picked.row, col=picked.col,
        zone=np.where(ok, picked.zone, picked.home), facts={},
    )  # fmt: skip
    if strict and not seen and finite.any():
        zones = sorted(set(picked.home[finite].tolist()))
        raise TileNotFoundError(f"year {year} is not indexed in UTM zone(s) {zones} of {where}")
    facts: dict[str, list[Any]] = {}
    for z, rects in seen.items():
        idx = np.flatnonzero(ok & (picked.zone == z))
        t = picked.tile[idx]
        loc.tile[idx] = rects.names[t].astype(object)
        for k, col in rects.facts.items():  # the tiles table's columns
            facts.setdefault(k, []).append((idx, np.asarray(col)[t]))
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


def location(loc: Located, lon: float, lat: float, year: int) -> TileLocation:
    """The first point of ``loc`` as a :class:`TileLocation`, or why it has none.

    Raises :class:`TileNotFoundError` naming the point's cell tile and zone
    when no indexed tile covers the point's pixel.
    """
    if not loc.ok[0]:
        clon, clat = (float(v) for v in cell_centre(lon, lat))
        name = tile_name(clon, clat)
        raise TileNotFoundError(
            f"no tile {name} (covering lon={lon}, lat={lat}) indexed for {year} in zone "
            f"{int(loc.zone[0])}, and no neighbouring tile covers its pixel"
        )
    facts = {k: v[0].item() if hasattr(v[0], "item") else v[0] for k, v in loc.facts.items()}
    return TileLocation(
        int(loc.zone[0]), int(year), str(loc.tile[0]), int(loc.row[0]), int(loc.col[0]), facts
    )


def swapped_hint(located: Callable[[float, float], bool], lon: float, lat: float) -> str:
    """A sentence suggesting lon/lat are swapped, when ``(lat, lon)`` would be read ("" if not).

    ``located(lon, lat)`` says whether a point there has an indexed tile.
    """
    if abs(lon) > 90 or (lon, lat) == (lat, lon) or not located(lat, lon):
        return ""
    return (
        f"; lon/lat may be swapped: lon={lat}, lat={lon} lies in indexed tiles "
        "(coordinates are longitude first)"
    )


def explain_missing(
    located: Callable[[float, float], bool],
    zone_reason: Callable[[], None],
    lon: float,
    lat: float,
    year: int,
    exc: TileNotFoundError | None,
) -> None:
    """Raise why no tile of ``year`` holds a point: the zone's own reason, and a hint when
    lon/lat look swapped; return when :func:`location` will say which tile is missing.

    ``located(x, y)`` says whether a point is read; ``zone_reason()`` raises the
    zone-year's :class:`TileNotFoundError` (not indexed, say) or returns.
    """
    hint = swapped_hint(located, lon, lat)
    if exc is None and not hint:
        return
    try:
        zone_reason()
    except TileNotFoundError as reason:
        raise TileNotFoundError(
            f"no indexed tile of {year} is near lon={lon}, lat={lat}: {reason}{hint}"
        ) from None
    if exc is not None:
        raise TileNotFoundError(f"{exc}{hint}") from None
    raise TileNotFoundError(
        f"no indexed tile of {year} covers lon={lon}, lat={lat}{hint}"
    ) from None
