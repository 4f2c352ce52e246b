"""Fetch a year's tiles table from a remote repository in a few round trips, not one per column.

The table is about 25 one-dimensional arrays, and Icechunk writes a
manifest per array. ``xr.open_zarr(...).load()`` reads the columns one
after another, so a cold reader of a published index waited one round trip
per manifest (a cold point at +20 ms spent most of its time there). Asking
for every column at once lets Icechunk fetch the manifests concurrently;
the table is then decoded by :func:`~tessera_vz.core.table.read_table` as
always (what it needs is in Icechunk's manifest cache, and the few chunk
objects in the published repository proxy's), so the result is the same
Dataset, the same checks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import xarray as xr
import zarr.api.asynchronous as zarr_async

from tessera_vz.core.layout import TILES
from tessera_vz.core.loop import sync
from tessera_vz.core.table import read_table

if TYPE_CHECKING:
    from zarr.abc.store import Store

log = logging.getLogger(__name__)


async def _fetch_columns(store: Store) -> int:
    """Read every array of the tiles group at once (and drop the values); how many."""
    try:
        group = await zarr_async.open_group(store=store, path=TILES, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError):
        return 0
    arrays = [array async for _, array in group.arrays()]
    await asyncio.gather(*(array.getitem(...) for array in arrays))
    return len(arrays)


def read_table_at_once(store: Store, remote: bool) -> xr.Dataset | None:
    """The tiles table of a session store (``None`` if it has none), its columns fetched together.

    ``remote``: the repository is behind a network (a published index,
    S3). A local repository is read directly: its files cost no round trip.
    """
    if remote:
        n = sync(_fetch_columns(store))
        log.debug("fetched %d table columns concurrently", n)
    return read_table(store)
