"""The rows of a published zone-year's tiles table near one point, from the blocks beside it.

A cold point on a published index needs the few tiles around it, not the
year's table (its snapshot and one manifest per column: megabytes for a
big zone). The index run writes the table also as one-degree blocks named
by the snapshot (:mod:`~tessera_vz.core.table_blocks`); given the snapshot
the reader resolved from the repository's info object, this fetches the
block list and the blocks around the point together (one round trip, on
the connection the repository proxy already has open) and checks them.
``None`` means "use the repository's table": not a published index, no
blocks (an index written before them, or a tip they were not written for),
or blocks that fail a check (logged: they must never disagree with the
repository silently).
"""

from __future__ import annotations

import contextlib
import logging
from urllib.parse import urlsplit

from tessera_vz.core import object_cache
from tessera_vz.core import table_blocks as tb
from tessera_vz.core.errors import TesseraError
from tessera_vz.core.published import proxy
from tessera_vz.core.table import TileColumns
from tessera_vz.core.text import printable
from tessera_vz.core.urls import join

log = logging.getLogger(__name__)


def table_near(
    location: str, zone: int, year: int, snapshot: str, lon: float, lat: float
) -> TileColumns | None:
    """The tiles of ``snapshot`` whose pixels may hold ``(lon, lat)``, or ``None`` (see module)."""
    if urlsplit(location).scheme not in ("http", "https"):
        return None  # a local or S3 repository's table is a fast read already
    try:
        where = tb.folder(year, snapshot)
    except ValueError:
        return None
    names = tb.blocks_near(lon, lat, zone)
    known = object_cache.load(join(location.rstrip("/") + "/", f"{where}/{tb.INDEX}"))
    if known is not None:  # an earlier process's list: ask only for blocks that exist
        with contextlib.suppress(ValueError):  # a bad one is reported below
            names = [n for n in names if n in tb.parse_index(known, zone, year, snapshot)]
    paths = [f"{where}/{tb.INDEX}", *(f"{where}/{n}.npz" for n in names)]
    try:
        found = proxy().fetch_beside(location, paths, tb.MAX_BLOCK)
    except (TesseraError, LookupError) as exc:
        log.info("zone %d year %d: table blocks not read (%s)", zone, year, exc)
        return None
    index, blocks = found[0], found[1:]
    if index is None:
        log.debug("zone %d year %d: no table blocks for snapshot %s", zone, year, snapshot)
        return None
    try:
        listed = tb.parse_index(index, zone, year, snapshot)
        parts = []
        for name, data in zip(names, blocks, strict=True):
            if name not in listed:
                continue  # no tile there
            if data is None:
                raise ValueError(f"block {name} is listed but missing")
            parts.append(tb.decode_block(data, name, snapshot))
    except ValueError as exc:
        log.warning(
            "zone %d year %d: ignoring the table blocks of %s: %s; reading the repository's "
            "table instead", zone, year, snapshot, printable(str(exc)),
        )  # fmt: skip
        return None
    return tb.concatenate(parts)
