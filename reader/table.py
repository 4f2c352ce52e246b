"""The per-year ``tiles`` table: one row per indexed tile.

It lets a reader find a tile and the byte layout of its files without
listing or opening tile groups, and a re-run decide what changed. It is an
ordinary xarray Dataset along a ``tile`` dimension whose coordinate is the
tile name, so ``xr.open_zarr(store, group="tiles")`` shows the inventory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .layout import TILES

#: Column name -> numpy dtype of the stored table.
COLUMNS: dict[str, str] = {
    "lon": "f8",
    "lat": "f8",
    "zone": "i2",
    "epsg": "i4",
    "left": "f8",
    "top": "f8",
    "height": "i4",
    "width": "i4",
    "bands": "i4",
    "emb_path": "U",
    "scales_path": "U",
    "emb_offset": "i8",
    "scales_offset": "i8",
    "emb_size": "i8",
    "scales_size": "i8",
    "emb_checksum": "U",
    "scales_checksum": "U",
    "emb_chunk_rows": "i4",
    "scales_chunk_rows": "i4",
    "scales_descr": "U",
    "scales_ndim": "i1",
    "source": "U",
    # What the inventory (manifest or listing) said about each file when the
    # tile was indexed ("size=…;mtime=…", "size=…;etag=…"; "" if nothing):
    # a re-run whose inventory says the same does not probe the tile again.
    "emb_listed": "U",
    "scales_listed": "U",
}

#: Values of columns added after the first layout, for tables written before them.
COLUMN_DEFAULTS: dict[str, Any] = {"emb_listed": "", "scales_listed": ""}


def table_dataset(names: list[str], columns: dict[str, Any], attrs: dict[str, Any]) -> xr.Dataset:
    """Build the table Dataset from column arrays (sorted by tile name)."""
    order = np.argsort(np.asarray(names, dtype=str), kind="stable")
    data = {
        col: ("tile", np.asarray(columns[col], dtype=dtype)[order])
        for col, dtype in COLUMNS.items()
    }
    return xr.Dataset(data, coords={"tile": np.asarray(names, dtype=str)[order]}, attrs=attrs)


def read_table(store: Any) -> xr.Dataset | None:
    """Load a year's table from a session store, or ``None`` if it has none."""
    try:
        ds = xr.open_zarr(store, group=TILES, consolidated=False, zarr_format=3, chunks=None)
    except (FileNotFoundError, KeyError):
        return None
    return ds.load()
