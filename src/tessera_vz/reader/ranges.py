"""Fetch many small byte ranges of tiles with as few requests as possible.

Ranges that lie close together are coalesced into one request first,
because on loopback or a real mirror a request costs far more than the
bytes between two pixels. Reads go to the source files through
:class:`~tessera_vz.core.boundary.SourceFiles`, the boundary that checks
every answer, follows redirects only to authorised origins and sends the
checksum the index recorded as a precondition; ranges of one file too far
apart to merge share one multi-range request. With direct reads off
(:attr:`ZoneYear.direct`), the same ranges go through the Icechunk store
instead (``get_partial_values`` with byte ranges of virtual chunks), one
virtual chunk per request, as ``xr.open_zarr`` reads them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import default_buffer_prototype

from tessera_vz.core.boundary import PART, SourceFiles
from tessera_vz.core.byteranges import MAX_RANGES
from tessera_vz.core.errors import ConfigurationError, SourceUnavailableError, translate_error
from tessera_vz.core.layout import EMBEDDINGS, SCALES
from tessera_vz.core.urls import join

log = logging.getLogger(__name__)

#: Merge two ranges of one chunk or file when fewer than this many bytes
#: separate them. On a real mirror a request costs a round trip (~20 ms,
#: about a megabyte of transfer), so windows read a few hundred KiB between
#: two wanted row spans rather than pay another request; points, whose wanted
#: ranges are 128 bytes, merge within a row of a tile (~100 KB) and across the
#: rows of the small scales file, not across embedding rows, where most of
#: what moved would be waste (measured: merging a cluster's rows halves the
#: requests but moves 10x the bytes and is no faster on loopback).
DEFAULT_GAP = 256 * 1024
POINT_GAP = 64 * 1024
#: The gap when every file answers multi-range requests: ranges a part
#: apart cost a few header lines, not a request, so only ranges closer than
#: a part's worth of bytes are merged (the rows of one tile in a window,
#: points in the same stretch of a row), never rows ~100 KB apart.
RANGE_GAP = 16 * 1024
#: The same for points: a part costs ~100 bytes of headers, a point 128, so
#: only points a few pixels apart share a range; a cluster's scales then
#: move ~100 KB less per tile for the same requests.
POINT_RANGE_GAP = 256
#: Ranges handed to one ``get_partial_values`` call, bounding memory.
_BATCH = 8192
#: Above this many fetched bytes, :func:`gather` cuts blob by blob instead of joining.
_JOIN_LIMIT = 32 << 20
_KEY_STRIDE = 1 << 42  # larger than any byte offset within a chunk


@dataclass(frozen=True)
class Plan:
    """Coalesced requests and where each original range sits in them."""

    keys: list[str]
    #: Per request, the code of its key (equal keys, equal codes).
    codes: NDArray[np.int64]
    starts: NDArray[np.int64]
    ends: NDArray[np.int64]
    #: For each original range: index of its request and offset within it.
    request: NDArray[np.int64]
    offset: NDArray[np.int64]
    #: For a plan read from the files: bounds of its ranges grouped into HTTP
    #: requests (:func:`requests`), worked out once when the plan is chosen.
    groups: NDArray[np.int64] | None = None


def coalesce(
    codes: NDArray[np.int64],
    names: Sequence[str],
    starts: NDArray[np.int64],
    ends: NDArray[np.int64],
    gap: int = DEFAULT_GAP,
    part: int | None = None,
) -> Plan:
    """Merge ranges of the same key separated by at most ``gap`` bytes.

    Each range's key is ``names[codes[i]]``: keys come as codes because a
    window's thousands of ranges share a few files, and comparing integers
    costs nothing next to building and sorting strings.

    With ``part``, a merged request is cut (between ranges, never inside
    one) so that each piece starts a new ``part``-sized stretch of the key:
    long runs of rows then arrive as several requests in parallel, which
    moves more per second than one stream. Vectorised: a run over hundreds
    of thousands of points costs milliseconds, so the request count, not
    Python, limits throughput.
    """
    codes = np.asarray(codes, np.int64)
    n = codes.size
    if n == 0:
        empty = np.zeros(0, np.int64)
        return Plan([], empty, empty, empty, empty, empty)
    starts = np.asarray(starts, np.int64)
    ends = np.asarray(ends, np.int64)
    order = np.lexsort((starts, codes))
    s = starts[order] + codes[order].astype(np.int64) * _KEY_STRIDE
    e = ends[order] + codes[order].astype(np.int64) * _KEY_STRIDE
    reach = np.maximum.accumulate(e)
    new = np.ones(n, dtype=bool)
    new[1:] = s[1:] > reach[:-1] + gap
    if part is not None:
        piece = (s - s[np.flatnonzero(new)][np.cumsum(new) - 1]) // part
        new[1:] |= piece[1:] != piece[:-1]
    group = np.cumsum(new) - 1
    first = np.flatnonzero(new)
    last = np.append(first[1:], n) - 1
    g_start = s[first]
    g_end = reach[last]
    g_code = codes[order][first]
    request = np.empty(n, np.int64)
    offset = np.empty(n, np.int64)
    request[order] = group
    offset[order] = s - g_start[group]
    return Plan(
        keys=[names[c] for c in g_code.tolist()],
        codes=g_code,
        starts=g_start - g_code.astype(np.int64) * _KEY_STRIDE,
        ends=g_end - g_code.astype(np.int64) * _KEY_STRIDE,
        request=request,
        offset=offset,
    )


async def fetch(store: Any, plan: Plan, what: str) -> list[bytes]:
    """Fetch the coalesced requests of ``plan`` (in order) through ``store``."""
    proto = default_buffer_prototype()
    out: list[bytes] = []
    for i in range(0, len(plan.keys), _BATCH):
        batch = [
            (plan.keys[j], RangeByteRequest(int(plan.starts[j]), int(plan.ends[j])))
            for j in range(i, min(i + _BATCH, len(plan.keys)))
        ]
        try:
            bufs = await store.get_partial_values(proto, batch)
        except Exception as exc:
            raise translate_error(await _first_failure(store, batch, exc), what) from None
        for (key, _), buf in zip(batch, bufs, strict=True):
            if buf is None:
                raise translate_error(KeyError(f"no chunk {key}"), what)
            out.append(buf.to_bytes())
    return out


async def _first_failure(store: Any, batch: list[tuple[str, Any]], exc: Exception) -> Exception:
    """The error of the first failing range read alone.

    A batched read can fail with a bare ``TypeError`` (a range Icechunk
    refused to fetch left a hole); reading ranges one by one until one
    fails gives Icechunk's own reason (unauthorised container, changed
    checksum) for the message.
    """
    proto = default_buffer_prototype()
    for key, byte_range in batch[:64]:
        try:
            await store.get(key, proto, byte_range=byte_range)
        except Exception as one:
            return one
    return exc


@dataclass(frozen=True)
class Wanted:
    """Byte ranges wanted from files of one kind, addressed two ways.

    ``chunk``/``chunk_starts`` place each range in a virtual chunk (the
    Icechunk path), ``file``/``file_starts`` in its source file (the direct
    path); both come from the same header facts of the index. Files and
    chunks are codes: a window wants thousands of ranges of a few files,
    and chunk keys are built only if the Icechunk path reads them.
    """

    #: Per range: index into ``urls`` of its source file, and its offset there.
    file: NDArray[np.int64]
    file_starts: NDArray[np.int64]
    urls: list[str]
    #: Per range: index of its virtual chunk (see :meth:`chunk_keys`), and its offset there.
    chunk: NDArray[np.int64]
    chunk_starts: NDArray[np.int64]
    lengths: NDArray[np.int64]
    #: Checksum text and size of each source URL, as the tiles table records them.
    checksums: dict[str, str]
    sizes: dict[str, int]
    #: Per distinct chunk: its tile (index into ``urls``/``tiles``) and chunk index.
    chunk_tile: NDArray[np.int64]
    chunk_index: NDArray[np.int64]
    #: Per tile: its group name and the key's tail after the chunk index.
    tiles: list[str]
    tails: list[str]
    array: str

    def chunk_keys(self) -> list[str]:
        """The Icechunk key of each distinct chunk, in code order."""
        return [
            f"{self.tiles[t]}/{self.array}/c/{c}{self.tails[t]}"
            for t, c in zip(self.chunk_tile.tolist(), self.chunk_index.tolist(), strict=True)
        ]


def tile_ranges(
    kind: str,
    names: Sequence[str] | NDArray[Any],
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    lengths: NDArray[np.int64],
    facts: Mapping[str, NDArray[Any]],
    item: int,
) -> Wanted:
    """``lengths`` pixels from ``(row, col)`` of each tile's ``kind`` file, addressed both ways.

    ``kind`` is ``"emb"`` or ``"scales"``; ``facts`` are the tiles-table
    columns, one entry per range, and ``item`` the bytes of one pixel. The
    chunk key and offset (Icechunk path) and the file offset (direct path)
    come from the same header facts the references were written from.
    """
    rows = np.asarray(rows, np.int64)
    n = rows.size
    k = np.asarray(facts[f"{kind}_chunk_rows"], np.int64)
    width = np.asarray(facts["width"], np.int64)
    # Tile codes, and one range of each tile.
    tile_names, one, tile = np.unique(np.asarray(names), return_index=True, return_inverse=True)
    tile = tile.astype(np.int64).reshape(-1)
    sources, paths = facts["source"][one].tolist(), facts[f"{kind}_path"][one].tolist()
    urls = [join(root, path) for root, path in zip(sources, paths, strict=True)]
    if kind == "emb":
        array, tails = EMBEDDINGS, ["/0/0"] * len(one)
    else:
        array = SCALES
        tails = ["/0/0" if nd == 3 else "/0" for nd in facts["scales_ndim"][one].tolist()]
    chunk = rows // k
    span = int(chunk.max()) + 1 if n else 1
    ids, code = np.unique(tile * span + chunk, return_inverse=True)
    return Wanted(
        file=tile,
        file_starts=np.asarray(facts[f"{kind}_offset"], np.int64) + (rows * width + cols) * item,
        urls=urls,
        chunk=code.astype(np.int64).reshape(-1),
        chunk_starts=((rows % k) * width + cols) * item,
        lengths=np.asarray(lengths, np.int64) * item,
        checksums=dict(zip(urls, facts[f"{kind}_checksum"][one].tolist(), strict=True)),
        sizes=dict(zip(urls, facts[f"{kind}_size"][one].tolist(), strict=True)),
        chunk_tile=ids // span,
        chunk_index=ids % span,
        tiles=tile_names.tolist(),
        tails=tails,
        array=array,
    )


@dataclass(frozen=True)
class ZoneYear:
    """Where the bytes of one zone-year come from, as reads need them.

    Mosaics and point reads are given this instead of calling back into
    the store that opened the index: the tiles are named in ``broken`` when
    their index records were refused (so they fail with that reason, never
    read), the boundary reads the files, and ``chunks`` (the Icechunk
    session store of the branch or tag) serves reads with ``direct`` off.
    """

    zone: int
    year: int
    files: SourceFiles
    chunks: Any
    direct: bool = True
    #: Tile name -> why its record in the index cannot be used.
    broken: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def check(self, names: Sequence[str] | NDArray[Any], what: str) -> None:
        """Fail before any request if one of ``names`` has a refused index record."""
        if not self.broken:
            return
        for name in dict.fromkeys(np.asarray(names).tolist()):
            if name in self.broken:
                raise SourceUnavailableError(
                    f"{what}: tile {name} ({self.year}, zone {self.zone}): {self.broken[name]}"
                )


def choose(
    files: SourceFiles,
    wanted: Wanted,
    gap: int,
    what: str,
    *,
    direct: bool = True,
    range_gap: int = RANGE_GAP,
) -> tuple[Plan, SourceFiles | None]:
    """The plan for ``wanted``, and the direct reader unless Icechunk reads it.

    Every file must lie under a root the caller authorised (``files``
    knows them), whichever path reads it; a file that does not is refused
    here, before any request. With ``direct`` the files are read through
    the boundary, ranges merged across chunk boundaries and grouped into
    multi-range requests (``range_gap`` replaces ``gap`` when every file
    serves them); otherwise through the Icechunk store, by chunk.
    """
    refused = sorted(u for u in wanted.urls if files.root_of(u) is None)
    if refused:
        raise ConfigurationError(
            f"{what}: {refused[0]} is not authorised (it lies under no source you trust)"
            + (f" (and {len(refused) - 1} more files)" if len(refused) > 1 else "")
            + ". Pass allow_local_sources=True (CLI: --allow-local-sources) for file:// "
            "sources you trust, or list its root in allowed_sources"
        )
    if direct:
        file_ends = wanted.file_starts + wanted.lengths
        if all(files.multi_range(u) for u in wanted.checksums):
            gap = min(gap, range_gap)
        by_file = coalesce(wanted.file, wanted.urls, wanted.file_starts, file_ends, gap, part=PART)
        return dataclasses.replace(by_file, groups=requests(by_file, files)), files
    ends = wanted.chunk_starts + wanted.lengths
    return coalesce(wanted.chunk, wanted.chunk_keys(), wanted.chunk_starts, ends, gap), None


def requests(plan: Plan, files: SourceFiles) -> NDArray[np.int64]:
    """The ranges of a direct ``plan`` grouped into HTTP requests, as bounds.

    Request ``g`` carries ranges ``bounds[g]`` to ``bounds[g + 1]``: short
    ranges of one file that answers multi-range requests share a request,
    up to :data:`MAX_RANGES` of them and about ``PART`` bytes; a range of
    half a ``PART`` or more (a piece of merged rows) is a request of its
    own, so long runs still arrive in parallel. Vectorised: a window has
    thousands of ranges.
    """
    n = len(plan.keys)
    if n == 0:
        return np.zeros(1, np.int64)
    multi_of = {url: files.multi_range(url) for url in set(plan.keys)}
    multi = np.fromiter((multi_of[url] for url in plan.keys), dtype=bool, count=n)
    size = plan.ends - plan.starts
    alone = ~multi | (size >= PART // 2)  # long pieces of merged rows arrive in parallel
    new = np.ones(n, dtype=bool)
    new[1:] = (plan.codes[1:] != plan.codes[:-1]) | alone[1:] | alone[:-1]
    first = np.flatnonzero(new)
    run = np.cumsum(new) - 1
    before = np.cumsum(size) - size
    stretch = (before - before[first][run]) // PART  # where each range starts
    index = np.arange(n) - first[run]
    cut = np.zeros(n, dtype=bool)
    cut[1:] = (stretch[1:] != stretch[:-1]) | (index[1:] % MAX_RANGES == 0)
    return np.append(np.flatnonzero(new | cut), n).astype(np.int64)


@dataclass(frozen=True)
class Arrival:
    """What one request brought: plan requests ``first, first + 1, …`` at ``at`` in ``data``.

    A multi-range answer carries many plan requests (consecutive ranges of
    one file) in one body; any other request carries one, at offset 0. A
    request that landed in the caller's views has no ``data``.
    """

    first: int
    data: Any
    at: NDArray[np.int64]


_AT0 = np.zeros(1, np.int64)


async def arrivals(
    store: Any,
    plan: Plan,
    files: SourceFiles | None,
    wanted: Wanted,
    what: str,
    into: Mapping[int, Sequence[memoryview]] | None = None,
) -> AsyncIterator[list[Arrival]]:
    """Yield what arrives for ``plan``, one HTTP request's worth at a time.

    A caller that places each batch while the others are in flight overlaps
    its copying with the transfer, and a multi-range request's many small
    ranges (all of one file) can be placed in one vectorised step. Through
    the Icechunk store the blobs arrive together (one ``get_partial_values``
    call per batch). A direct request that is one range of ``into`` lands
    in its views (:meth:`SourceFiles.get_into`) and arrives with no data.
    Every failure names the tile and the URL it was reading.
    """
    if files is None:
        yield [Arrival(i, blob, _AT0) for i, blob in enumerate(await fetch(store, plan, what))]
        return
    landing = into or {}
    tile_of = dict(zip(wanted.urls, wanted.tiles, strict=True))

    async def one(lo: int, hi: int) -> list[Arrival]:
        url = plan.keys[lo]
        sum_, size, doing = wanted.checksums[url], wanted.sizes[url], f"{what}, tile {tile_of[url]}"
        if hi == lo + 1 and lo in landing:
            start, end = int(plan.starts[lo]), int(plan.ends[lo])
            await files.get_into(url, start, end, sum_, doing, landing[lo], size)
            return [Arrival(lo, None, _AT0)]
        starts, ends = plan.starts[lo:hi].tolist(), plan.ends[lo:hi].tolist()
        body, at = await files.get_ranges(url, starts, ends, sum_, doing, size)
        return [Arrival(lo, body, at)]

    bounds = (plan.groups if plan.groups is not None else requests(plan, files)).tolist()
    tasks = [asyncio.ensure_future(one(lo, hi)) for lo, hi in itertools.pairwise(bounds)]
    try:
        for done in asyncio.as_completed(tasks):
            yield await done
    finally:
        for task in tasks:
            task.cancel()


async def read(source: ZoneYear, wanted: Wanted, gap: int, what: str) -> tuple[Plan, list[Arrival]]:
    """Fetch the points ``wanted``; the plan says where each range landed."""
    plan, via = choose(
        source.files, wanted, gap, what, direct=source.direct, range_gap=POINT_RANGE_GAP
    )
    got: list[Arrival] = []
    async for batch in arrivals(source.chunks, plan, via, wanted, what):
        got.extend(batch)
    return plan, got


def landed(plan: Plan, got: Sequence[Arrival]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """For each request of ``plan``: the index in ``got`` of its arrival and its offset there."""
    src = np.full(len(plan.keys), -1, np.int64)
    pos = np.zeros(len(plan.keys), np.int64)
    for k, a in enumerate(got):
        src[a.first : a.first + a.at.size] = k
        pos[a.first : a.first + a.at.size] = a.at
    return src, pos


def gather(plan: Plan, got: Sequence[Arrival], length: int, what: str) -> NDArray[np.uint8]:
    """Cut each original range (all ``length`` bytes long) out of what arrived.

    Small fetches are joined and cut in one vectorised step; large ones (a
    cluster read as a few long runs of rows) are cut arrival by arrival,
    because copying hundreds of megabytes into one buffer costs more than
    the loop.
    """
    n = len(plan.request)
    out = np.empty((n, length), dtype=np.uint8)
    if n == 0:
        return out
    src, pos = landed(plan, got)
    sizes = np.fromiter((len(a.data) for a in got), dtype=np.int64, count=len(got))
    k = src[plan.request]
    begin = pos[plan.request] + plan.offset
    short = (k < 0) | (begin + length > sizes[k])
    if short.any():
        i = int(np.argmax(short))
        raise SourceUnavailableError(
            f"{what}: the answer for {plan.keys[plan.request[i]]} holds fewer bytes than "
            f"asked; the transfer was cut or the file is shorter than indexed. Retry, or "
            "run `tessera-vz verify`"
        )
    if sizes.sum() <= _JOIN_LIMIT:
        base = np.cumsum(sizes) - sizes
        flat = np.frombuffer(b"".join(a.data for a in got), dtype=np.uint8)
        # Fancy indexing of the window view copies each range; np.take would copy every window.
        return sliding_window_view(flat, length)[base[k] + begin]
    order = np.argsort(k, kind="stable")
    cuts = np.flatnonzero(np.diff(k[order])) + 1
    for idx in np.split(order, cuts):
        buf = np.frombuffer(got[int(k[idx[0]])].data, dtype=np.uint8)
        out[idx] = sliding_window_view(buf, length)[begin[idx]]
    return out
