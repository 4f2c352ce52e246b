"""Fetch a year's tiles table from a repository in a few round trips, not one per column.

The table is about 25 one-dimensional arrays, and Icechunk writes a
manifest per array. ``xr.open_zarr(...).load()`` reads the columns one
after another, so a cold reader of a published index waited one round trip
per manifest (a cold point at +20 ms spent most of its time there). Here
every column is asked for at once (Icechunk fetches the manifests
concurrently) and the table is kept as the values fetched
(:class:`~tessera_vz.core.table.TileColumns`, no xarray), so each
column is read once: reading them again through ``xr.open_zarr`` cost a
global read of points a second pass over every zone's table (half of its
index requests, and the Python of xarray's lazy indexing per column).
A table whose arrays carry anything xarray would decode (an attribute
other than a NaN fill value, another dimension) is read through
:func:`~tessera_vz.core.table.read_table` as before, so the result is
always what it gives.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr.api.asynchronous as zarr_async

from tessera_vz.core.layout import TILES
from tessera_vz.core.loop import sync
from tessera_vz.core.table import TileColumns, read_table

if TYPE_CHECKING:
    from zarr.abc.store import Store

log = logging.getLogger(__name__)

#: The table's one dimension and its coordinate (the tile names).
_DIM = "tile"


async def _fetch_columns(store: Store) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Every array of the tiles group, read at once: ``({name: array}, {name: values})``.

    ``None`` when the group does not exist.
    """
    try:
        group = await zarr_async.open_group(store=store, path=TILES, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError):
        return None
    arrays = {name: array async for name, array in group.arrays()}
    values = await asyncio.gather(*(array.getitem(...) for array in arrays.values()))
    return {"group": group, **arrays}, dict(zip(arrays, values, strict=True))


def _plain(array: Any, values: Any) -> bool:
    """Whether xarray would give ``values`` as they are: 1-D along ``tile``, nothing to decode.

    The only attribute allowed is a ``_FillValue`` that is NaN on a float
    column (masking NaN as missing changes nothing).
    """
    if not isinstance(values, np.ndarray) or values.ndim != 1:
        return False
    if tuple(array.metadata.dimension_names or ()) != (_DIM,):
        return False
    attrs = dict(array.attrs)
    fill = attrs.pop("_FillValue", None)
    if attrs:
        return False
    if fill is None:
        return True
    if values.dtype.kind != "f" or not isinstance(fill, str):
        return False
    try:
        raw = base64.b64decode(fill, validate=True)
    except ValueError:
        return False
    return len(raw) == values.dtype.itemsize and bool(np.isnan(np.frombuffer(raw, values.dtype))[0])


def read_table_at_once(store: Store) -> TileColumns | None:
    """The tiles table of a session store (``None`` if none), its columns fetched together."""
    found = sync(_fetch_columns(store))
    if found is None:
        return None
    arrays, columns = found
    group = arrays.pop("group")
    if _DIM in columns and all(_plain(arrays[n], v) for n, v in columns.items()):
        log.debug("fetched %d table columns concurrently", len(columns))
        return TileColumns(columns.pop(_DIM), columns, dict(group.attrs))
    table = read_table(store)
    return None if table is None else TileColumns.of(table)
