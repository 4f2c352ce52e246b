"""Mosaics on the 10 m lattice of one UTM zone, read byte-exactly from tiles.

The I/O of a mosaic, in one place: :func:`read_window` decides which tile
each pixel comes from (:mod:`.ownership`), asks for only the needed columns
of each tile row (planned by :mod:`.range_plan`, fetched by
:mod:`.range_fetch` through the boundary), and places the bytes as they
arrive (:mod:`.placement`). Which tile wins a pixel, and how the rule
treats southern tiles, is described in :mod:`.ownership` and
:mod:`.windows`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.boundary import SourceFiles
from tessera_vz.reader.ownership import ownership, row_spans
from tessera_vz.reader.placement import kind_of, landing, layout, place_blocks, place_small
from tessera_vz.reader.range_fetch import Arrival, ByteSource, arrivals
from tessera_vz.reader.range_plan import DEFAULT_GAP, Plan, Wanted, choose, tile_ranges
from tessera_vz.reader.windows import TileRects, Window


def _window_array(shape: tuple[int, ...], dtype: type) -> NDArray[Any]:
    """A zero-filled array for a window, on ordinary 4 KiB pages.

    NumPy asks the kernel for transparent huge pages (``MADV_HUGEPAGE``) on
    large allocations; on a host whose memory is fragmented each 2 MiB fault
    then costs milliseconds in the kernel: a whole-tile window (117 MB) took
    twice as long as a sequential read of the same bytes at the median call,
    with 400 page faults and 300 ms of kernel time. A ``bytearray`` comes
    zeroed from ``calloc`` (lazily mapped pages, no madvise), as the
    sequential read's buffer does.
    """
    count = int(np.prod(shape))
    return np.frombuffer(bytearray(count * np.dtype(dtype).itemsize), dtype).reshape(shape)


def band_count(rects: TileRects, zone: int) -> int:
    """The band count shared by a zone-year's tiles (128 when it has none)."""
    bands = np.unique(rects.facts["bands"]) if rects.names.size else np.array([128])
    if bands.size != 1:
        raise ValueError(f"tiles of zone {zone} hold different band counts {bands.tolist()}")
    return int(bands[0])


async def read_window(
    source: ByteSource,
    window: Window,
    rects: TileRects,
    gap: int = DEFAULT_GAP,
) -> tuple[NDArray[np.int8], NDArray[np.float32], NDArray[np.bool_]]:
    """Raw embeddings ``(h, w, B)``, scales ``(h, w)`` or ``(h, w, B)``, and the filled mask."""
    owner = ownership(window, rects)
    b = band_count(rects, source.zone)
    per_band = bool(rects.names.size) and int(rects.facts["scales_ndim"].max()) == 3
    # Zeroed pages, so pixels no tile owns need no pass of their own.
    emb = _window_array((window.height, window.width, b), np.int8)
    scale = _window_array(
        (window.height, window.width, b) if per_band else (window.height, window.width), np.float32
    )
    scale.fill(np.nan)
    filled = owner >= 0
    cat = row_spans(owner, window, rects)
    if cat["row"].size == 0:
        return emb, scale, filled
    used = np.unique(cat["tile"])
    what = f"reading a {window.height}x{window.width} window of zone {source.zone} ({source.year})"
    source.check(rects.names[used], what)
    s_item = 4 * (b if per_band else 1)
    facts = {k: v[cat["tile"]] for k, v in rects.facts.items()}
    cat["width"] = facts["width"].astype(np.int64)
    where = (rects.names[cat["tile"]], cat["tile_row"], cat["tile_col"], cat["n"], facts)
    e_want, s_want = tile_ranges("emb", *where, b), tile_ranges("scales", *where, s_item)
    files = source.files
    e_plan, e_direct = choose(files, e_want, gap, what, direct=source.direct)
    s_plan, s_direct = choose(files, s_want, gap, what, direct=source.direct)

    async def place(
        out: NDArray[Any], plan: Plan, direct: SourceFiles | None, item: int, want: Wanted
    ) -> None:
        same = np.array([kind_of(out, rects, t) == out.dtype for t in used.tolist()], bool)
        native = same[np.searchsorted(used, cat["tile"])]  # used is sorted
        lay = layout(cat, plan, item, native)
        into = landing(out, cat, plan, lay, item, native) if direct is not None else None
        # Short spans wait for the blocks: a page of a fresh array first touched
        # by a scattered short copy costs a fault each (measured on a whole-tile
        # window: 2,300 wedge rows took 49 ms placed on arrival, 2.5 ms after
        # the blocks had touched their pages).
        later: list[Arrival] = []
        async for batch in arrivals(source.chunks, plan, direct, want, what, into):
            for arrival in batch:
                if arrival.data is None:  # landed in place
                    continue
                if place_blocks(out, owner, cat, plan, arrival, lay, item, rects):
                    later.append(arrival)
        for arrival in later:
            place_small(out, owner, cat, plan, arrival, lay, item, rects)

    await asyncio.gather(
        place(emb, e_plan, e_direct, b, e_want), place(scale, s_plan, s_direct, s_item, s_want)
    )
    return emb, scale, filled
