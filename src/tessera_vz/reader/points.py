"""Batched point reads: the embedding of the pixel under each located point.

Points located by :func:`~tessera_vz.reader.pixels.locate_pixels` become
two byte ranges each (its ``bands`` embedding bytes and its scale); the
ranges are coalesced (:mod:`.range_plan`) and fetched concurrently
(:mod:`.range_fetch`). A point with no indexed tile, or with an invalid
scale, is NaN, and :func:`point_status` says which of those it was (a
table of points carries it per row). These functions are given the byte
sources they need; they never open an index.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.errors import SourceChangedError, SourceUnavailableError
from tessera_vz.reader.pixels import Located, only
from tessera_vz.reader.range_fetch import ByteSource, fetch_points
from tessera_vz.reader.range_plan import POINT_GAP, tile_ranges

#: Why a point has a value or not, per row of a sampled table (:func:`point_status`).
OK = "ok"
NO_TILE = "no tile"  # a valid coordinate no indexed tile of the year covers
NO_DATA = "no data"  # covered, but the pixel's scale is invalid (no-data)
INVALID = "invalid coordinate"  # not finite, or outside lon [-180, 180] / lat [-90, 90]
EMPTY = "empty"  # the coordinate cell (or geometry) is missing
ERROR = "error"  # the tile could not be read (its source failed); the rest were read
NO_YEAR = "no year"  # the row's own year (a year column) is missing or not a year
YEAR_NOT_INDEXED = "year not indexed"  # the row's own year is indexed in no zone
STATUSES = (OK, NO_TILE, NO_DATA, INVALID, EMPTY, ERROR, NO_YEAR, YEAR_NOT_INDEXED)


async def read_located(
    sources: Mapping[int, ByteSource], loc: Located, year: int, gap: int = POINT_GAP
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

    async def zone(z: int) -> None:
        m = zones == z
        idx = np.flatnonzero(m)
        source = sources[z]
        what = f"reading {idx.size} points of {year} in zone {z}"
        source.check(names[m], what)
        fm = {key: v[m] for key, v in f.items()}
        one = np.ones(idx.size, np.int64)
        e_want = tile_ranges("emb", names[m].tolist(), rows[m], cols[m], one, fm, b)
        s_want = tile_ranges("scales", names[m].tolist(), rows[m], cols[m], one, fm, s_item)
        e_got, s_got = await asyncio.gather(
            fetch_points(source, e_want, gap, what, b),
            fetch_points(source, s_want, gap, what, s_item),
        )
        emb[ok[m]] = e_got.view(np.int8)
        descr = np.dtype(str(f["scales_descr"][idx[0]]))
        raw = s_got.view(descr).astype(np.float32)
        scale[ok[m]] = raw if per_band else raw[:, 0]

    # The zones' requests go together: one zone's round trips need not wait for another's.
    await asyncio.gather(*(zone(int(z)) for z in np.unique(zones)))
    return emb, scale, loc.ok


def check_year(year: Any) -> int:
    """A year as an int: an int, a NumPy integer or an int-like string (``"2024"``).

    Anything else is refused with a :class:`TypeError` naming what was
    found (a string is not iterated: ``"2024"`` is one year, not four).
    """
    if isinstance(year, (int, np.integer)) and not isinstance(year, (bool, np.bool_)):
        return int(year)
    if isinstance(year, str) and year.strip().isdigit():
        return int(year.strip())
    raise TypeError(
        f"a year must be an int such as 2024 (or an int-like string '2024'); got "
        f"{type(year).__name__} {year!r}"
    )


def years_list(year: Any) -> tuple[list[int], bool]:
    """Normalise ``year`` (an int, an int-like string, or a list of them) and say whether
    a time axis is wanted (a list)."""
    if isinstance(year, (int, np.integer, str)):
        return [check_year(year)], False
    try:
        years = [check_year(y) for y in year]
    except TypeError as exc:
        if "not iterable" not in str(exc):
            raise
        raise TypeError(
            f"year must be an int such as 2024 or a list of years; got {type(year).__name__} "
            f"{year!r}"
        ) from None
    if not years:
        raise ValueError("years must name at least one year")
    return years, True


def years_asked(
    year: int | Sequence[int] | None, years: Sequence[int] | None = None
) -> tuple[list[int], bool]:
    """:func:`years_list` of ``years`` if given, else of ``year`` (one of them is needed)."""
    if years is not None:
        return years_list(years)
    if year is None:
        raise TypeError("give year=… (an int or a list of years) or years=[…]")
    return years_list(year)


async def read_isolated(
    sources: Mapping[int, ByteSource], loc: Located, year: int, gap: int = POINT_GAP
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
    (:func:`~tessera_vz.core.coords.valid_lonlat_mask`); ``located``: an
    indexed tile covers it;
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
