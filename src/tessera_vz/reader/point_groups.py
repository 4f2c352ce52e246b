"""Points read a few zones at a time: the plain-array reads of ``point`` and ``points``.

A table of points can span the globe; each zone it touches costs a tiles
table in memory (about 1.15 kB a tile) and a session. So points are read
:data:`GROUP_ZONES` zones (of their cells) at a time (:func:`zone_groups`):
a group's tables are loaded together
(:meth:`~tessera_vz.reader.zone_year.ZoneYears.prepare`), its points located
and read, then the next group, while the registry lets the least recently
used zone-years go. :mod:`.samples` reads its batches by the same groups.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.coords import valid_lonlat_mask
from tessera_vz.core.errors import TileNotFoundError
from tessera_vz.core.loop import sync
from tessera_vz.core.quantisation import dequantise
from tessera_vz.reader.pixels import Located, locate_pixels
from tessera_vz.reader.points import read_located
from tessera_vz.reader.range_plan import POINT_GAP
from tessera_vz.reader.resample import cell_zone
from tessera_vz.reader.zone_year import ZoneYears

#: Zones (of the points' cells) read at a time.
GROUP_ZONES = 6


def point_values(
    zone_years: ZoneYears, located: Sequence[Located], years: Sequence[int], gap: int = POINT_GAP
) -> NDArray[np.float32]:
    """``(time, N, bands)`` dequantised values of located points, the years read concurrently.

    A point without a pixel, or whose scale is invalid, is a row of NaN.
    """

    async def read_all() -> list[tuple[NDArray[np.int8], NDArray[np.float32], NDArray[np.bool_]]]:
        reads = []
        for loc, y in zip(located, years, strict=True):
            zones = np.unique(loc.zone[loc.ok]).tolist()
            sources = {z: zone_years.get(z, y).source for z in zones}
            reads.append(read_located(sources, loc, y, gap))
        return list(await asyncio.gather(*reads))

    out = []
    for emb, scale, ok in sync(read_all()):
        if emb.shape[1] == 0:
            out.append(np.full((ok.size, zone_years.bands(years)), np.nan, np.float32))
            continue
        values = dequantise(emb, scale)
        values[~ok] = np.nan
        out.append(values)
    return np.stack(out)


def zone_groups(lon: NDArray[np.float64], valid: NDArray[np.bool_]) -> list[NDArray[np.bool_]]:
    """Masks of the points of :data:`GROUP_ZONES` zones (of their cells) each, in zone order.

    The first group also holds the points that are not ``valid`` (they
    are read nowhere); there is always at least one group.
    """
    home = np.zeros(lon.size, np.int64)
    home[valid] = cell_zone(lon[valid])
    zones = np.unique(home[valid]).tolist()
    groups = [zones[i : i + GROUP_ZONES] for i in range(0, len(zones), GROUP_ZONES)] or [[]]
    return [np.isin(home, g) | (~valid if i == 0 else False) for i, g in enumerate(groups)]


def points_in_groups(
    zone_years: ZoneYears,
    lon: NDArray[np.float64],
    lat: NDArray[np.float64],
    years: Sequence[int],
    gap: int = POINT_GAP,
) -> NDArray[np.float32]:
    """:func:`point_values` of points anywhere, :data:`GROUP_ZONES` zones at a time.

    ``TesseraStore.points`` over the globe then holds a few zones' tables at
    once. Raises :class:`TileNotFoundError` when a year is indexed in none
    of the zones the points could be read from (as one located batch does).
    """
    valid = valid_lonlat_mask(lon, lat)
    seen: set[int] = set()
    out: NDArray[np.float32] | None = None
    for mine in zone_groups(lon, valid):
        idx = np.flatnonzero(mine)
        located = []
        for y in years:
            zone_years.prepare_points(lon[idx], y)
            rects = zone_years.rects_or_none(y)

            def recorded(z: int, rects: Any = rects, y: int = y) -> Any:
                found = rects(z)
                if found is not None:
                    seen.add(y)
                return found

            located.append(locate_pixels(recorded, lon[idx], lat[idx], y,
                                         zone_years.root, strict=False))  # fmt: skip
        values = point_values(zone_years, located, years, gap)
        if out is None:
            out = np.full((len(years), lon.size, values.shape[2]), np.nan, np.float32)
        out[:, idx] = values
    missing = [y for y in years if y not in seen]
    if missing and valid.any():
        zones = sorted(set(cell_zone(lon[valid]).tolist()))
        raise TileNotFoundError(
            f"year {missing[0]} is not indexed in UTM zone(s) {zones} of {zone_years.root}"
        )
    assert out is not None  # zone_groups gives at least one group
    return out
