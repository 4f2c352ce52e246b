"""Plan the byte ranges of a read: which requests carry which ranges (pure, no I/O).

A read of points or of a window wants many small byte ranges of a few tile
files. Ranges that lie close together are coalesced into one request
(:func:`coalesce`), because on loopback or a real mirror a request costs far
more than the bytes between two pixels; ranges of one file too far apart to
merge are grouped into multi-range requests (:func:`requests`) when its
server answers them. :func:`tile_ranges` turns pixel positions into ranges
addressed both as files (read directly) and as virtual chunks (read through
Icechunk), and :func:`choose` picks the plan for the path that reads them.
Issuing the requests is :mod:`.range_fetch`'s job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.boundary import PART, SourceFiles
from tessera_vz.core.byteranges import MAX_RANGES
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.layout import EMBEDDINGS, SCALES
from tessera_vz.core.urls import join

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
#: Points' merged requests are cut at this size: a point wants 128 bytes, so a
#: longer piece of a file is mostly waste held in memory while in flight.
POINT_PART = 1 << 20
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


def choose(
    files: SourceFiles,
    wanted: Wanted,
    gap: int,
    what: str,
    *,
    direct: bool = True,
    range_gap: int = RANGE_GAP,
    part: int | None = None,
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
        by_file = coalesce(
            wanted.file, wanted.urls, wanted.file_starts, file_ends, gap, part=part or PART
        )
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
