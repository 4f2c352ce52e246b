"""Fetch many small byte ranges of virtual chunks through the Icechunk store.

Every read goes through the store (not straight to the source files) so the
index stays the single source of truth: checksums and container
authorisation apply to every byte. Ranges of the same chunk that lie close
together are coalesced into one request first, because on loopback or a
real mirror a request costs far more than the bytes between two pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import default_buffer_prototype

from .errors import translate_error

log = logging.getLogger(__name__)

#: Merge two ranges of one chunk when fewer than this many bytes separate them.
#: On a real mirror a request costs a round trip (~20 ms, about a megabyte of
#: transfer), so windows read a few hundred KiB between two wanted row spans
#: rather than pay another request; scattered points, whose wanted ranges are
#: 128 bytes, merge only when close, or most of what moves would be waste.
DEFAULT_GAP = 256 * 1024
POINT_GAP = 16 * 1024
#: Ranges handed to one ``get_partial_values`` call, bounding memory.
_BATCH = 8192
_KEY_STRIDE = 1 << 42  # larger than any byte offset within a chunk


@dataclass(frozen=True)
class Plan:
    """Coalesced requests and where each original range sits in them."""

    keys: list[str]
    starts: NDArray[np.int64]
    ends: NDArray[np.int64]
    #: For each original range: index of its request and offset within it.
    request: NDArray[np.int64]
    offset: NDArray[np.int64]


def coalesce(
    keys: Sequence[str], starts: NDArray[np.int64], ends: NDArray[np.int64], gap: int = DEFAULT_GAP
) -> Plan:
    """Merge ranges of the same key separated by at most ``gap`` bytes.

    Vectorised: a run over hundreds of thousands of points costs
    milliseconds, so the request count, not Python, limits throughput.
    """
    n = len(keys)
    if n == 0:
        empty = np.zeros(0, np.int64)
        return Plan([], empty, empty, empty, empty)
    uniq, codes = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    starts = np.asarray(starts, np.int64)
    ends = np.asarray(ends, np.int64)
    order = np.lexsort((starts, codes))
    s = starts[order] + codes[order].astype(np.int64) * _KEY_STRIDE
    e = ends[order] + codes[order].astype(np.int64) * _KEY_STRIDE
    reach = np.maximum.accumulate(e)
    new = np.ones(n, dtype=bool)
    new[1:] = s[1:] > reach[:-1] + gap
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
        keys=[str(uniq[c]) for c in g_code],
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
            raise translate_error(exc, what) from None
        for (key, _), buf in zip(batch, bufs, strict=True):
            if buf is None:
                raise translate_error(KeyError(f"no chunk {key}"), what)
            out.append(buf.to_bytes())
    return out


def gather(plan: Plan, blobs: list[bytes], length: int) -> NDArray[np.uint8]:
    """Cut each original range (all ``length`` bytes long) out of the fetched blobs."""
    n = len(plan.request)
    out = np.empty((n, length), dtype=np.uint8)
    if n == 0:
        return out
    sizes = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
    base = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    begin = base[plan.request] + plan.offset
    span = np.arange(length, dtype=np.int64)
    step = max(1, (1 << 22) // max(1, length))
    for i in range(0, n, step):
        out[i : i + step] = flat[begin[i : i + step, None] + span]
    return out
