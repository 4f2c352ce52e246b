"""The dask chunks a tile is opened with: many virtual chunks per task, none split.

A tile's virtual chunks are runs of whole rows no larger than the chunk
budget (1 MiB), so one pixel read through ``xr.open_zarr`` moves at most
that; a real tile height often has no divisor within the budget, which
gives one-row chunks (1,111 of them for ``H = 1111``). ``xr.open_zarr``'s
default (``chunks={}``) makes one dask task per virtual chunk, and dask's
few threads then wait out one round trip per row: a whole tile took 17 s
over a 20 ms link where ``region`` took 1.4 s. Asking for dask chunks of
many virtual chunks lets zarr fetch each task's chunks concurrently
(``async.concurrency``), which brings the tile within ~2x of ``region``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import xarray as xr
import zarr

log = logging.getLogger(__name__)

#: Bytes of embeddings one dask task reads: a few tasks per tile, so dask's
#: threads and zarr's per-task concurrency overlap (measured in
#: ``benchmarks/xarray_read.py``).
TASK_BYTES = 16 << 20
#: Chunk fetches zarr keeps in flight per read; zarr's default is 10, which
#: over a 20 ms link leaves a task of 160 one-row chunks waiting ~16 round trips.
CONCURRENCY = 64
_ZARR_DEFAULT = 10


def tile_chunks(facts: Mapping[str, Any], task_bytes: int = TASK_BYTES) -> dict[str, int]:
    """Dask chunks for a tile whose tiles-table row is ``facts``.

    Rows per task are a multiple of both arrays' chunk rows (no virtual
    chunk is split between tasks: zarr would fetch it twice), about
    ``task_bytes`` of embeddings; ``x`` and ``band`` whole.
    """
    k = math.lcm(int(facts["emb_chunk_rows"]), int(facts["scales_chunk_rows"]))
    height = int(facts["height"])
    row = max(1, int(facts["width"]) * int(facts["bands"]))
    rows = k * max(1, task_bytes // (k * row))
    return {"y": min(rows, max(height, 1)), "x": -1, "band": -1}


def raise_zarr_concurrency() -> None:
    """Let zarr fetch :data:`CONCURRENCY` chunks at once, unless the user chose a value.

    ``async.concurrency`` is zarr's process-wide setting; it is changed
    only while it holds zarr's default (10), so a value the user set stays
    (measured: a one-row-chunk tile over HTTPS + 20 ms, 2.95 s at 10,
    1.47 s at 64).
    """
    if zarr.config.get("async.concurrency") == _ZARR_DEFAULT:
        zarr.config.set({"async.concurrency": CONCURRENCY})
        log.info("zarr async.concurrency raised from %d to %d", _ZARR_DEFAULT, CONCURRENCY)


def open_tile_group(store: Any, name: str, facts: Mapping[str, Any]) -> xr.Dataset:
    """A tile group of an Icechunk session ``store`` as a lazy Dataset: dask chunks of
    :func:`tile_chunks` (``facts``: its tiles-table row), zarr fetching 64 chunks at once."""
    raise_zarr_concurrency()
    chunks = tile_chunks(facts)
    return xr.open_zarr(store, group=name, consolidated=False, zarr_format=3, chunks=chunks)
