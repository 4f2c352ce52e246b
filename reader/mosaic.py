"""Mosaics on the 10 m lattice of one UTM zone, read byte-exactly from tiles.

A zone pixel takes its value from the tile whose 0.1-degree cell contains the
pixel centre; where that tile is absent (not indexed, or the centre lies
outside its rectangle), from any tile of the zone that covers it. Southern
tiles join the northern grid with northings minus 10,000,000 m, as upstream
readers do. For every tile row a window touches, only the needed columns are
read, and neighbouring ranges are coalesced into larger requests.
"""

from __future__ import annotations

import asyncio
import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from pyproj import CRS

from .errors import SourceUnavailableError, TileNotFoundError
from .geometry import FALSE_NORTHING, PIXEL, project, unproject, utm_zone
from .layout import EMBEDDINGS, SCALES
from .ranges import DEFAULT_GAP, Arrival, Plan, arrivals, choose, tile_ranges

if TYPE_CHECKING:
    from .store import TesseraStore

#: Largest window ``region`` assembles in memory (pixels); larger areas go
#: through :meth:`TesseraStore.open_zone`, which reads lazily per chunk.
MAX_PIXELS = 16_000_000


@dataclass(frozen=True)
class Window:
    """A north-up window of whole pixels on a zone's northern 10 m lattice."""

    zone: int
    left: float
    top: float
    height: int
    width: int

    @property
    def epsg(self) -> int:
        return 32600 + self.zone

    def centres(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Northings (descending) and eastings of the pixel centres."""
        y = self.top - PIXEL * np.arange(self.height, dtype=np.float64) - PIXEL / 2
        x = self.left + PIXEL * np.arange(self.width, dtype=np.float64) + PIXEL / 2
        return y.astype(np.float64), x.astype(np.float64)

    def sub(self, rows: slice, cols: slice) -> Window:
        r0, r1, _ = rows.indices(self.height)
        c0, c1, _ = cols.indices(self.width)
        return Window(self.zone, self.left + PIXEL * c0, self.top - PIXEL * r0,
                      max(0, r1 - r0), max(0, c1 - c0))  # fmt: skip


def check_bbox(bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """Validate ``(west, south, east, north)`` in degrees."""
    try:
        w, s, e, n = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise ValueError(
            f"bbox must be four numbers (west, south, east, north); got {bbox!r}"
        ) from None
    if not all(math.isfinite(v) for v in (w, s, e, n)):
        raise ValueError(f"bbox has non-finite values: {bbox!r}")
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise ValueError(
            f"bbox {bbox!r} must satisfy -180 <= west < east <= 180 and -90 <= south < north <= 90"
        )
    return w, s, e, n


def window_for_bbox(bbox: tuple[float, float, float, float], zone: int | None = None) -> Window:
    """The smallest lattice window of ``zone`` covering a lon/lat box."""
    w, s, e, n = check_bbox(bbox)
    z = int(utm_zone((w + e) / 2)) if zone is None else int(zone)
    t = np.linspace(0.0, 1.0, 65)
    lons = np.concatenate([w + (e - w) * t, np.full(65, e), e - (e - w) * t, np.full(65, w)])
    lats = np.concatenate([np.full(65, s), s + (n - s) * t, np.full(65, n), n - (n - s) * t])
    x, y = project(lons, lats, 32600 + z)
    left = math.floor(float(x.min()) / PIXEL) * PIXEL
    top = math.ceil(float(y.max()) / PIXEL) * PIXEL
    right = math.ceil(float(x.max()) / PIXEL) * PIXEL
    bottom = math.floor(float(y.min()) / PIXEL) * PIXEL
    return Window(z, left, top, round((top - bottom) / PIXEL), round((right - left) / PIXEL))


def _cell_id(lon: NDArray[np.float64], lat: NDArray[np.float64]) -> NDArray[np.int64]:
    return (np.floor(lon * 10 + 1e-9).astype(np.int64) + 1800) * 4000 + (
        np.floor(lat * 10 + 1e-9).astype(np.int64) + 900
    )


@dataclass
class TileRects:
    """Tile rectangles of a zone-year on the northern lattice."""

    names: NDArray[np.str_]
    left: NDArray[np.float64]
    top: NDArray[np.float64]
    height: NDArray[np.int64]
    width: NDArray[np.int64]
    cell: NDArray[np.int64]
    facts: dict[str, NDArray[Any]]


def tile_rects(ts: TesseraStore, zone: int, year: int) -> TileRects:
    """Every tile of a zone-year as a rectangle on the zone's northern grid."""
    table = ts.tiles(year, zone)
    south = table["epsg"].values >= 32700
    top = table["top"].values - np.where(south, FALSE_NORTHING, 0.0)
    return TileRects(
        names=table["tile"].values.astype(str),
        left=table["left"].values.astype(np.float64),
        top=top.astype(np.float64),
        height=table["height"].values.astype(np.int64),
        width=table["width"].values.astype(np.int64),
        cell=_cell_id(table["lon"].values, table["lat"].values),
        facts={str(k): table[k].values for k in table.data_vars},
    )


def extent(rects: TileRects, zone: int) -> Window:
    """The window covering every tile of a zone-year."""
    if rects.names.size == 0:
        raise TileNotFoundError(f"zone {zone} has no tiles")
    left = float(rects.left.min())
    top = float(rects.top.max())
    right = float((rects.left + PIXEL * rects.width).max())
    bottom = float((rects.top - PIXEL * rects.height).min())
    return Window(zone, left, top, round((top - bottom) / PIXEL), round((right - left) / PIXEL))


#: Pixel centres closer than this (metres) to a projected cell edge are decided
#: by unprojecting them. A cell's meridian edges are straight in UTM to
#: centimetres, but its parallels bow by up to ~1.2 m over 0.1 degree of
#: longitude at mid-latitudes (sagitta of a circle of radius N cot(lat)), so
#: with this margin every other pixel is decided exactly by the quadrilateral.
EDGE_TOLERANCE = 3.0


def _quad_bounds(
    quad: NDArray[np.float64], y: NDArray[np.float64], margin: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per row, the eastings whose signed distance to every edge is below ``margin``.

    The quad is clockwise (x east, y north); each edge's half-plane bounds x
    from one side at a given northing, so a convex quad is, row by row, the
    open interval ``(lo, hi)``. Cheaper than testing every pixel.
    """
    lo = np.full(y.shape, -np.inf)
    hi = np.full(y.shape, np.inf)
    for i in range(4):
        (x0, y0), (x1, y1) = quad[i], quad[(i + 1) % 4]
        length = math.hypot(x1 - x0, y1 - y0)
        a = -(y1 - y0) / length  # distance = a * x + c(y)
        c = ((x1 - x0) * (y - y0) + (y1 - y0) * x0) / length
        if a > 0:
            np.minimum(hi, (margin - c) / a, out=hi)
        elif a < 0:
            np.maximum(lo, (margin - c) / a, out=lo)
        else:
            hi[c >= margin] = -np.inf
    return lo, hi


def _runs(lo: NDArray[np.int64], hi: NDArray[np.int64]) -> tuple[NDArray[np.int64], ...]:
    """Row and column indices of the column runs ``[lo[r], hi[r])`` of every row ``r``."""
    counts = hi - lo
    rows = np.repeat(np.arange(lo.size), counts)
    first = np.cumsum(counts) - counts
    return rows, lo[rows] + np.arange(int(counts.sum())) - first[rows]


def ownership(window: Window, rects: TileRects) -> NDArray[np.int32]:
    """Index of the tile each window pixel is read from, or -1 (no data).

    The owner is the tile whose 0.1-degree cell holds the pixel centre,
    found with a point-in-quadrilateral test in UTM (the cell's projected
    corners, as row intervals); pixels within :data:`EDGE_TOLERANCE` of an
    edge are decided by unprojecting them, so the result equals
    unprojecting every pixel at a fraction of the cost. A pixel its cell's
    tile does not cover goes to any covering tile.
    """
    h, w = window.height, window.width
    owner = np.full((h, w), -1, dtype=np.int32)  # half the bytes of int64 to scan
    if h == 0 or w == 0 or rects.names.size == 0:
        return owner
    right = rects.left + PIXEL * rects.width
    bottom = rects.top - PIXEL * rects.height
    cand = np.flatnonzero(
        (rects.left < window.left + PIXEL * w) & (right > window.left)
        & (rects.top > window.top - PIXEL * h) & (bottom < window.top)
    )  # fmt: skip
    if cand.size == 0:
        return owner
    y, x = window.centres()
    # Window rows/cols whose pixel centres lie inside each candidate's rectangle.
    c_in0 = np.searchsorted(x, rects.left[cand], side="right")
    c_in1 = np.searchsorted(x, right[cand], side="left")
    r_in0 = np.searchsorted(-y, -rects.top[cand], side="right")
    r_in1 = np.searchsorted(-y, -bottom[cand], side="left")
    lon = np.asarray(rects.facts["lon"], np.float64)[cand]
    lat = np.asarray(rects.facts["lat"], np.float64)[cand]
    # Corners NW, NE, SE, SW: clockwise with x east and y north.
    qx, qy = project(
        np.stack([lon - 0.05, lon + 0.05, lon + 0.05, lon - 0.05], axis=1),
        np.stack([lat + 0.05, lat + 0.05, lat - 0.05, lat - 0.05], axis=1),
        window.epsg,
    )
    near_rows: list[NDArray[np.int64]] = []
    near_cols: list[NDArray[np.int64]] = []
    cols = np.arange(w, dtype=np.int32)
    tol = EDGE_TOLERANCE
    for j, t in enumerate(cand):
        r0, r1, c0, c1 = int(r_in0[j]), int(r_in1[j]), int(c_in0[j]), int(c_in1[j])
        if r0 >= r1 or c0 >= c1:
            continue
        quad = np.stack([qx[j], qy[j]], axis=1)
        ys, xs = y[r0:r1], x[c0:c1]
        lo, hi = _quad_bounds(quad, ys, -tol)  # clearly inside
        olo, ohi = _quad_bounds(quad, ys, tol)  # not clearly outside
        a = np.searchsorted(xs, lo, side="right")
        b = np.searchsorted(xs, hi, side="left")
        oa = np.searchsorted(xs, olo, side="left")
        ob = np.searchsorted(xs, ohi, side="right")
        # Cells do not overlap, so no other tile holds these pixels clearly.
        # Only the box around them is scanned: a neighbour's cell is a thin
        # wedge of its rectangle's overlap with the window.
        clear = np.flatnonzero(a < b)
        if clear.size:
            ra, rb = int(clear[0]), int(clear[-1]) + 1
            ca, cb = int(a[clear].min()), int(b[clear].max())
            k = cols[None, ca:cb]
            inside = (k >= a[ra:rb, None].astype(np.int32)) & (k < b[ra:rb, None].astype(np.int32))
            np.copyto(owner[r0 + ra : r0 + rb, c0 + ca : c0 + cb], np.int32(t), where=inside)
        # Near the edges: [oa, a) and [b, ob) of each row (all of [oa, ob) if none is clear).
        some = a < b
        for n0, n1 in ((oa, np.where(some, np.maximum(a, oa), ob)), (np.where(some, b, ob), ob)):
            rr, cc = _runs(n0, np.maximum(n1, n0))
            near_rows.append(rr + r0)
            near_cols.append(cc + c0)
    if near_rows:
        rr, cc = np.concatenate(near_rows), np.concatenate(near_cols)
        elon, elat = unproject(x[cc], y[rr], window.epsg)
        cells = _cell_id(elon, elat)
        order = np.argsort(rects.cell[cand])
        sorted_cells = rects.cell[cand][order]
        pos = np.clip(np.searchsorted(sorted_cells, cells), 0, sorted_cells.size - 1)
        match = sorted_cells[pos] == cells
        at = order[pos]  # candidate position of the cell's tile
        inside = match & (rr >= r_in0[at]) & (rr < r_in1[at]) & (cc >= c_in0[at]) & (cc < c_in1[at])
        owner[rr, cc] = np.where(inside, cand[at], -1)
    # Pixels whose cell's tile is absent or does not cover them: any covering tile.
    for j, t in enumerate(cand):
        sub = owner[int(r_in0[j]) : int(r_in1[j]), int(c_in0[j]) : int(c_in1[j])]
        sub[sub < 0] = t
    return owner


async def read_window(
    ts: TesseraStore,
    zone: int,
    year: int,
    window: Window,
    rects: TileRects | None = None,
    gap: int = DEFAULT_GAP,
) -> tuple[NDArray[np.int8], NDArray[np.float32], NDArray[np.bool_]]:
    """Raw embeddings ``(h, w, B)``, scales ``(h, w)`` or ``(h, w, B)``, and the filled mask."""
    rects = rects if rects is not None else tile_rects(ts, zone, year)
    owner = ownership(window, rects)
    bands = np.unique(rects.facts["bands"]) if rects.names.size else np.array([128])
    if bands.size != 1:
        raise ValueError(f"tiles of zone {zone} hold different band counts {bands.tolist()}")
    b = int(bands[0])
    per_band = bool(rects.names.size) and int(rects.facts["scales_ndim"].max()) == 3
    # Every owned pixel is written below; only the others need zeroing.
    emb = np.empty((window.height, window.width, b), np.int8)
    scale = np.full((window.height, window.width, b) if per_band else (window.height, window.width),
                    np.nan, np.float32)  # fmt: skip
    filled = owner >= 0
    emb[~filled] = 0
    cat = row_spans(owner, window, rects)
    if cat["row"].size == 0:
        return emb, scale, filled
    used = np.unique(cat["tile"])
    s_item = 4 * (b if per_band else 1)
    facts = {k: v[cat["tile"]] for k, v in rects.facts.items()}
    cat["width"] = facts["width"].astype(np.int64)
    store = ts.session(zone, year).store
    files = ts.source_files()
    what = f"reading a {window.height}x{window.width} window of zone {zone} ({year})"
    where = (rects.names[cat["tile"]], cat["tile_row"], cat["tile_col"], cat["n"], facts)
    e_want, s_want = tile_ranges("emb", *where, b), tile_ranges("scales", *where, s_item)
    checksums = {**e_want.checksums, **s_want.checksums}
    e_plan, e_direct = choose(files, e_want, gap, what, direct=ts.direct_reads)
    s_plan, s_direct = choose(files, s_want, gap, what, direct=ts.direct_reads)

    async def place(out: NDArray[Any], plan: Plan, direct: Any, item: int) -> None:
        same = np.array([_kind(out, rects, t) == out.dtype for t in used.tolist()], bool)
        native = same[np.searchsorted(used, cat["tile"])]  # used is sorted
        lay = _layout(cat, plan, item, native)
        into = _landing(out, cat, plan, lay, item, native) if direct is not None else None
        # Short spans wait for the blocks: a page of a fresh array first touched
        # by a scattered short copy costs a fault each (measured on a whole-tile
        # window: 2,300 wedge rows took 49 ms placed on arrival, 2.5 ms after
        # the blocks had touched their pages).
        later: list[Arrival] = []
        async for batch in arrivals(store, plan, direct, checksums, what, into):
            for arrival in batch:
                if arrival.data is None:  # landed in place
                    continue
                if _place_blocks(out, owner, cat, plan, arrival, lay, item, rects):
                    later.append(arrival)
        for arrival in later:
            _place_small(out, owner, cat, plan, arrival, lay, item, rects)

    await asyncio.gather(place(emb, e_plan, e_direct, b), place(scale, s_plan, s_direct, s_item))
    return emb, scale, filled


def row_spans(owner: NDArray[np.int32], window: Window, rects: TileRects) -> dict[str, Any]:
    """Per tile and window row it owns: the column span, and where it sits in the tile.

    One pass over the window finds the runs of equal owner along each row;
    a tile's span in a row runs from its first owned column to its last,
    ``full`` when that is one run (else the copy keeps the other owners'
    pixels). Sorted by tile, then row: one range per row and file.
    """
    h, w = owner.shape
    start = np.ones((h, w), dtype=bool)
    start[:, 1:] = owner[:, 1:] != owner[:, :-1]
    r, c = np.divmod(np.flatnonzero(start), w)  # run starts, row by row
    stop = np.append(c[1:], w)
    stop[np.append(r[1:] != r[:-1], True)] = w  # a row's last run ends at the edge
    t = owner[r, c]
    mine = t >= 0
    r, c, stop, t = r[mine], c[mine], stop[mine], t[mine]
    order = np.lexsort((c, r, t))
    r, c, stop, t = r[order], c[order], stop[order], t[order]
    new = np.ones(r.size, dtype=bool)
    new[1:] = (t[1:] != t[:-1]) | (r[1:] != r[:-1])
    first = np.flatnonzero(new)
    last = np.append(first[1:], r.size)[: first.size] - 1
    tiles, rows, c_lo = t[first].astype(np.int64), r[first].astype(np.int64), c[first]
    row0 = np.rint((rects.top[tiles] - window.top) / PIXEL).astype(np.int64)
    col0 = np.rint((window.left - rects.left[tiles]) / PIXEL).astype(np.int64)
    return {
        "full": first == last,
        "row": rows,
        "c_lo": c_lo.astype(np.int64),
        "n": (stop[last] - c_lo).astype(np.int64),
        "tile": tiles,
        "tile_row": rows + row0,  # row0: tile row of window row 0
        "tile_col": c_lo + col0,
    }


#: A single row shorter than this (bytes) is a short span: a byte copy placed
#: after the blocks. Longer rows, and runs of rows, are strided block copies
#: placed as they arrive.
_SMALL = 16 * 1024


#: A request lands in place (:func:`_landing`) when its spans average at
#: least this many bytes: full-width rows of embeddings (~110 KB), not rows
#: of scales (~3.5 KB), which cost a system call each.
_LAND = 16 * 1024


@dataclass(frozen=True)
class _Layout:
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


def _layout(
    spans: dict[str, NDArray[Any]], plan: Plan, item: int, native: NDArray[np.bool_]
) -> _Layout:
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
    return _Layout(
        block_req=req[starts[blocks]],
        block_start=starts[blocks],
        block_stop=stops[blocks],
        block_full=full[blocks],
        small_req=req[small],
        small=small,
        small_plain=spans["full"][small] & native[small],
    )


def _landing(
    out: NDArray[Any],
    spans: dict[str, NDArray[Any]],
    plan: Plan,
    lay: _Layout,
    item: int,
    native: NDArray[np.bool_],
) -> dict[int, list[memoryview]]:
    """For requests that can land in place: the window views their bytes go to, in order.

    A request of one range (a piece of merged rows) whose every span is a
    block its tile owns whole, in the window's dtype, is received straight
    into the window's rows (:meth:`SourceFiles.get_into`); the bytes
    between spans (columns of the tile outside the window, or owned by a
    neighbour) go to a throwaway buffer. Anything else arrives in a buffer
    and is placed by :func:`_place_blocks` and :func:`_place_small`.
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


def _place_blocks(
    out: NDArray[Any],
    owner: NDArray[np.int32],
    spans: dict[str, NDArray[Any]],
    plan: Plan,
    arrival: Arrival,
    lay: _Layout,
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
        kind = _kind(out, rects, t)
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


def _place_small(
    out: NDArray[Any],
    owner: NDArray[np.int32],
    spans: dict[str, NDArray[Any]],
    plan: Plan,
    arrival: Arrival,
    lay: _Layout,
    item: int,
    rects: TileRects,
) -> None:
    """Copy the short spans one request brought into the window, as :func:`_place_blocks`."""
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
        out[rows[m], cols_[m]] = pixels[m].view(_kind(out, rects, t)).reshape(-1, *out.shape[2:])


def _short(rects: TileRects, t: int, got: int, need: int) -> SourceUnavailableError:
    return SourceUnavailableError(
        f"tile {rects.names[t]} answered {got} bytes where {need} were expected; the transfer "
        "was cut or the file is shorter than indexed. Retry, or run `tessera-vz verify`"
    )


def _kind(out: NDArray[Any], rects: TileRects, t: int) -> np.dtype[Any]:
    """The dtype of tile ``t``'s bytes for ``out`` (int8 embeddings, or its scales dtype)."""
    if out.dtype == np.int8:
        return np.dtype(np.int8)
    return np.dtype(str(rects.facts["scales_descr"][t]))


@functools.lru_cache(maxsize=128)
def _crs_attrs(epsg: int) -> dict[str, Any]:
    """CF attributes and WKT of a CRS; building them costs milliseconds, so once."""
    crs = CRS.from_epsg(epsg)
    return {**crs.to_cf(), "spatial_ref": crs.to_wkt()}


def spatial_ref(epsg: int, window: Window) -> xr.DataArray:
    """CF/GDAL grid-mapping variable, so rioxarray and GDAL know the CRS."""
    transform = f"{window.left} {PIXEL} 0 {window.top} 0 {-PIXEL}"
    attrs = {**_crs_attrs(epsg), "GeoTransform": transform}
    return xr.DataArray(np.int32(0), attrs=attrs)


def window_dataset(
    window: Window,
    emb: NDArray[Any],
    scale: NDArray[Any] | None,
    bands: int,
    extra_attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Wrap window arrays as a georeferenced Dataset (``embeddings`` [+ ``scales``])."""
    y, x = window.centres()
    lead = ("time",) if emb.ndim == 4 else ()
    data_vars: dict[str, Any] = {
        EMBEDDINGS: ((*lead, "y", "x", "band"), emb, {"grid_mapping": "spatial_ref"})
    }
    if scale is not None:
        sdims = (*lead, "y", "x") if scale.ndim == emb.ndim - 1 else (*lead, "y", "x", "band")
        data_vars[SCALES] = (sdims, scale, {"grid_mapping": "spatial_ref"})
    ds = xr.Dataset(
        data_vars,
        coords={"y": ("y", y, {"units": "m", "standard_name": "projection_y_coordinate"}),
                "x": ("x", x, {"units": "m", "standard_name": "projection_x_coordinate"}),
                "band": np.arange(bands, dtype=np.int16),
                "spatial_ref": spatial_ref(window.epsg, window)},
        attrs={"proj:code": f"EPSG:{window.epsg}",
               "spatial:transform": [PIXEL, 0.0, window.left, 0.0, -PIXEL, window.top],
               "spatial:shape": [window.height, window.width],
               "tessera:zone": window.zone, **(extra_attrs or {})},
    )  # fmt: skip
    return ds
