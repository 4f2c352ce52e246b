"""Placing arrived bytes into a window: blocks, short spans and in-place landings.

Pure array work on bytes that have already arrived (or views they will land
in): :func:`layout` works out, before any byte arrives, where each planned
range goes in the window; :func:`place_blocks` and :func:`place_small` copy
an arrival's bytes there; :func:`landing` gives the window views a request
can be received into directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from tessera_vz.core.errors import SourceUnavailableError
from tessera_vz.reader.windows import TileRects

if TYPE_CHECKING:
    from tessera_vz.reader.range_fetch import Arrival
    from tessera_vz.reader.range_plan import Plan

#: A single row shorter than this (bytes) is a short span: a byte copy placed
#: after the blocks. Longer rows, and runs of rows, are strided block copies
#: placed as they arrive.
_SMALL = 16 * 1024


#: A request lands in place (:func:`landing`) when its spans average at
#: least this many bytes: full-width rows of embeddings (~110 KB), not rows
#: of scales (~3.5 KB), which cost a system call each.
_LAND = 16 * 1024


@dataclass(frozen=True)
class Layout:
    """Where a plan's ranges go in the window, worked out before any byte arrives.

    Runs of spans (rows of one tile with the same columns, consecutive in
    one request) are copied as one strided block each; single short spans
    (a neighbour's wedge along the window edge, one part each of a
    multi-range answer) are byte copies from memoryviews, a fraction of a
    numpy call each, placed after the blocks. Both are sorted by request,
    so an arrival finds its share with two binary searches.
    """

    block_req: NDArray[np.int64]
    block_start: NDArray[np.int64]
    block_stop: NDArray[np.int64]
    #: Whether the block's tile owns every pixel of it (a plain copy).
    block_full: NDArray[np.bool_]
    small_req: NDArray[np.int64]
    small: NDArray[np.int64]
    #: Whether the small span's tile owns it whole and its bytes are the
    #: window's dtype (a byte copy).
    small_plain: NDArray[np.bool_]


def layout(
    spans: dict[str, NDArray[Any]], plan: Plan, item: int, native: NDArray[np.bool_]
) -> Layout:
    """``native``: per span, whether its tile's bytes are the window's dtype."""
    row, c_lo, n, tile, width = (spans[k] for k in ("row", "c_lo", "n", "tile", "width"))
    req, off = plan.request, plan.offset
    brk = np.ones(row.size, dtype=bool)
    brk[1:] = (
        (tile[1:] != tile[:-1]) | (row[1:] != row[:-1] + 1) | (c_lo[1:] != c_lo[:-1])
        | (n[1:] != n[:-1]) | (req[1:] != req[:-1])
        | (off[1:] - off[:-1] != width[1:] * item)
    )  # fmt: skip
    starts = np.flatnonzero(brk)
    stops = np.append(starts[1:], row.size)
    single = (stops - starts == 1) & (n[starts] * item < _SMALL)
    full = np.logical_and.reduceat(spans["full"], starts) if starts.size else brk[:0]
    blocks = np.flatnonzero(~single)
    blocks = blocks[np.argsort(req[starts[blocks]], kind="stable")]
    small = starts[single]
    small = small[np.argsort(req[small], kind="stable")]
    return Layout(
        block_req=req[starts[blocks]],
        block_start=starts[blocks],
        block_stop=stops[blocks],
        block_full=full[blocks],
        small_req=req[small],
        small=small,
        small_plain=spans["full"][small] & native[small],
    )


def landing(
    out: NDArray[Any],
    spans: dict[str, NDArray[Any]],
    plan: Plan,
    lay: Layout,
    item: int,
    native: NDArray[np.bool_],
) -> dict[int, list[memoryview]]:
    """For requests that can land in place: the window views their bytes go to, in order.

    A request of one range (a piece of merged rows) whose every span is a
    block its tile owns whole, in the window's dtype, is received straight
    into the window's rows (:meth:`SourceFiles.get_into`); the bytes
    between spans (columns of the tile outside the window, or owned by a
    neighbour) go to a throwaway buffer. Anything else arrives in a buffer
    and is placed by :func:`place_blocks` and :func:`place_small`.
    """
    if plan.groups is None or spans["row"].size == 0:
        return {}
    req, off = plan.request, plan.offset
    lone = np.zeros(len(plan.keys), dtype=bool)
    bounds = plan.groups
    lone[bounds[:-1][np.diff(bounds) == 1]] = True
    ok = native.copy()
    ok[lay.small] = False
    starts = lay.block_start[~lay.block_full]
    stops = lay.block_stop[~lay.block_full]
    for a, z in zip(starts.tolist(), stops.tolist(), strict=True):
        ok[a:z] = False
    lone[req[~ok]] = False
    # Views of a few hundred bytes (a neighbour's scales) cost a system call
    # each; such requests arrive in one buffer instead.
    big = np.bincount(req, spans["n"] * item, minlength=lone.size)
    lone &= big >= _LAND * np.bincount(req, minlength=lone.size)
    pick = np.flatnonzero(lone[req])
    if pick.size == 0:
        return {}
    pick = pick[np.lexsort((off[pick], req[pick]))]
    sizes = spans["n"][pick] * item
    dst = (spans["row"][pick] * out.shape[1] + spans["c_lo"][pick]) * item
    r, o = req[pick], off[pick]
    first = np.ones(pick.size, dtype=bool)
    first[1:] = r[1:] != r[:-1]
    last = np.append(first[1:], True)
    gaps = o - np.append(0, o[:-1] + sizes[:-1])
    gaps[first] = o[first]
    tails = (plan.ends - plan.starts)[r] - (o + sizes)
    if (gaps < 0).any() or (tails[last] < 0).any():
        return {}  # spans that share bytes, or run past their range: placed from a buffer
    scratch = memoryview(bytearray(int(max(gaps.max(), tails[last].max()))))
    flat = memoryview(out).cast("B")
    into: dict[int, list[memoryview]] = {}
    rows = zip(r.tolist(), dst.tolist(), sizes.tolist(), gaps.tolist(), strict=True)
    for g, d, m, gap in rows:
        views = into.setdefault(g, [])
        if gap:
            views.append(scratch[:gap])
        views.append(flat[d : d + m])
    for g, tail in zip(r[last].tolist(), tails[last].tolist(), strict=True):
        if tail:
            into[g].append(scratch[:tail])
    return into


def place_blocks(
    out: NDArray[Any],
    owner: NDArray[np.int32],
    spans: dict[str, NDArray[Any]],
    plan: Plan,
    arrival: Arrival,
    lay: Layout,
    item: int,
    rects: TileRects,
) -> bool:
    """Copy the blocks one request brought into the window; say if it holds short spans too.

    Pixels another tile owns are left alone. Embeddings are int8; scales
    keep the tile's dtype (either byte order) until the copy casts them to
    float32.
    """
    row, c_lo, n, tile, width = (spans[k] for k in ("row", "c_lo", "n", "tile", "width"))
    buf = np.frombuffer(arrival.data, np.uint8)
    g0, g1 = arrival.first, arrival.first + arrival.at.size
    tail = out.shape[2:]
    a, z = np.searchsorted(lay.block_req, (g0, g1))
    for k in range(int(a), int(z)):
        i, j = int(lay.block_start[k]), int(lay.block_stop[k])
        t, r0, c0, cols = int(tile[i]), int(row[i]), int(c_lo[i]), int(n[i])
        stride = int(width[i]) * item
        start = int(arrival.at[int(plan.request[i]) - g0] + plan.offset[i])
        need = start + (j - i - 1) * stride + cols * item
        if need > buf.size:
            raise _short(rects, t, buf.size, need)
        kind = kind_of(out, rects, t)
        strides = (stride, item, *((kind.itemsize,) if tail else ()))
        block = np.ndarray((j - i, cols, *tail), kind, buf, start, strides)
        dst = out[r0 : r0 + j - i, c0 : c0 + cols]
        if lay.block_full[k]:
            dst[...] = block
        else:
            mask = owner[r0 : r0 + j - i, c0 : c0 + cols] == t
            np.copyto(dst, block, where=mask.reshape(*mask.shape, *(1,) * (out.ndim - 2)))
    a, z = np.searchsorted(lay.small_req, (g0, g1))
    return bool(z > a)


def place_small(
    out: NDArray[Any],
    owner: NDArray[np.int32],
    spans: dict[str, NDArray[Any]],
    plan: Plan,
    arrival: Arrival,
    lay: Layout,
    item: int,
    rects: TileRects,
) -> None:
    """Copy the short spans one request brought into the window, as :func:`place_blocks`."""
    row, c_lo, n, tile = (spans[k] for k in ("row", "c_lo", "n", "tile"))
    buf = np.frombuffer(arrival.data, np.uint8)
    g0, g1 = arrival.first, arrival.first + arrival.at.size
    a, z = np.searchsorted(lay.small_req, (g0, g1))
    idx = lay.small[a:z]
    src = arrival.at[plan.request[idx] - g0] + plan.offset[idx]
    size = n[idx] * item
    over = src + size > buf.size
    if over.any():
        first = int(np.argmax(over))
        raise _short(rects, int(tile[idx[first]]), buf.size, int(src[first] + size[first]))
    # A span its tile owns whole, in the window's own dtype, is one byte copy:
    # cheaper in a loop than any per-pixel vectorised step at a few hundred spans.
    plain = lay.small_plain[a:z]
    # Memoryviews: a slice copy costs a fraction of numpy's per-call overhead.
    flat, got = memoryview(out).cast("B"), memoryview(arrival.data).cast("B")
    dst = ((row[idx] * out.shape[1] + c_lo[idx]) * item)[plain].tolist()
    for d, f, m in zip(dst, src[plain].tolist(), size[plain].tolist(), strict=True):
        flat[d : d + m] = got[f : f + m]
    if plain.all():
        return
    # Others pixel by pixel: the owner decides, the copy casts the scales' dtype.
    idx, src = idx[~plain], src[~plain]
    counts = n[idx]
    step = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    begin = np.repeat(src, counts) + step * item
    rows = np.repeat(row[idx], counts)
    cols_ = np.repeat(c_lo[idx], counts) + step
    tiles = np.repeat(tile[idx], counts)
    keep = owner[rows, cols_] == tiles
    pixels = sliding_window_view(buf, item)[begin[keep]]  # np.take would copy every window
    rows, cols_, tiles = rows[keep], cols_[keep], tiles[keep]
    for t in np.unique(tile[idx]).tolist():
        m = tiles == t
        out[rows[m], cols_[m]] = pixels[m].view(kind_of(out, rects, t)).reshape(-1, *out.shape[2:])


def _short(rects: TileRects, t: int, got: int, need: int) -> SourceUnavailableError:
    return SourceUnavailableError(
        f"tile {rects.names[t]} answered {got} bytes where {need} were expected; the transfer "
        "was cut or the file is shorter than indexed. Retry, or run `tessera-vz verify`"
    )


def kind_of(out: NDArray[Any], rects: TileRects, t: int) -> np.dtype[Any]:
    """The dtype of tile ``t``'s bytes for ``out`` (int8 embeddings, or its scales dtype)."""
    if out.dtype == np.int8:
        return np.dtype(np.int8)
    return np.dtype(str(rects.facts["scales_descr"][t]))
