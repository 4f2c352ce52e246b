"""Fetch the byte ranges a plan asks for, and cut each wanted range out of what arrived.

The requests of a :class:`~tessera_vz.reader.range_plan.Plan` go to the
source files through :class:`~tessera_vz.core.boundary.SourceFiles`, the
boundary that checks every answer, follows redirects only to authorised
origins and sends the checksum the index recorded as a precondition. With
direct reads off (:attr:`ByteSource.direct`), the same ranges go through
the Icechunk store instead (``get_partial_values`` with byte ranges of
virtual chunks), one virtual chunk per request, as ``xr.open_zarr`` reads
them. Which requests to send is decided in :mod:`.range_plan`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from icechunk import IcechunkError, IcechunkStore
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from zarr.abc.store import RangeByteRequest
from zarr.core.buffer import default_buffer_prototype

from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.errors import SourceUnavailableError, translate_error
from tessera_vz.core.text import printable
from tessera_vz.reader.range_plan import (
    POINT_PART,
    POINT_RANGE_GAP,
    Plan,
    Wanted,
    choose,
    requests,
)

#: Ranges handed to one ``get_partial_values`` call, bounding memory.
_BATCH = 8192
#: Direct requests in flight at once per read (the boundary's own limit is
#: per reader; this one bounds the tasks and bodies a read holds).
IN_FLIGHT = 128


async def fetch_chunks(store: IcechunkStore, plan: Plan, what: str) -> list[bytes]:
    """Fetch the coalesced requests of ``plan`` (in order) through an Icechunk ``store``."""
    proto = default_buffer_prototype()
    out: list[bytes] = []
    for i in range(0, len(plan.keys), _BATCH):
        batch = [
            (plan.keys[j], RangeByteRequest(int(plan.starts[j]), int(plan.ends[j])))
            for j in range(i, min(i + _BATCH, len(plan.keys)))
        ]
        try:
            bufs = await store.get_partial_values(proto, batch)
        # Icechunk's own errors (storage, authorisation, a changed checksum), or a
        # bare TypeError: a range it refused to fetch leaves a hole (None) that its
        # Python wrapper cannot turn into a buffer.
        except (IcechunkError, TypeError) as exc:
            raise translate_error(await _first_failure(store, batch, exc), what) from None
        for (key, _), buf in zip(batch, bufs, strict=True):
            if buf is None:
                raise translate_error(KeyError(f"no chunk {key}"), what)
            out.append(buf.to_bytes())
    return out


async def _first_failure(
    store: IcechunkStore, batch: list[tuple[str, RangeByteRequest]], exc: Exception
) -> Exception:
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
        except IcechunkError as one:
            return one
    return exc


@dataclass(frozen=True)
class ByteSource:
    """Where the bytes of one zone-year's tiles come from, as reads need them.

    Mosaics and point reads are given this instead of calling back into
    the store that opened the index: the tiles are named in ``refused`` when
    their index records were refused (so they fail with that reason, never
    read), the boundary reads the files, and ``chunks`` (the Icechunk
    session store of the branch or tag) serves reads with ``direct`` off.
    """

    zone: int
    year: int
    files: SourceFiles
    chunks: IcechunkStore
    direct: bool = True
    #: Tile name -> why its record in the index cannot be used.
    refused: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def check(self, names: Sequence[str] | NDArray[Any], what: str) -> None:
        """Fail before any request if one of ``names`` has a refused index record."""
        if not self.refused:
            return
        for name in dict.fromkeys(np.asarray(names).tolist()):
            if name in self.refused:
                raise SourceUnavailableError(
                    f"{what}: tile {printable(name)} ({self.year}, zone {self.zone}): "
                    f"{self.refused[name]}"
                )


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
    store: IcechunkStore,
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
        yield [
            Arrival(i, blob, _AT0) for i, blob in enumerate(await fetch_chunks(store, plan, what))
        ]
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
    async for done in bounded(one(lo, hi) for lo, hi in itertools.pairwise(bounds)):
        yield done


async def bounded[T](jobs: Iterator[Coroutine[Any, Any, T]]) -> AsyncIterator[T]:
    """Run ``jobs`` with at most :data:`IN_FLIGHT` at once, yielding results as they finish.

    A plan over a single-range mirror has one request per range (100,000
    points: 200,000 of them); making every task at once costs memory in
    proportion to the ranges and lets finished bodies pile up. Here memory
    is bounded by what is in flight. Jobs not yet started are never made;
    those running are cancelled if the caller stops early.
    """
    running: set[asyncio.Future[T]] = set()
    try:
        for job in jobs:
            running.add(asyncio.ensure_future(job))
            if len(running) >= IN_FLIGHT:
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        while running:
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                yield task.result()
    finally:
        for task in running:
            task.cancel()


async def fetch_points(
    source: ByteSource, wanted: Wanted, gap: int, what: str, length: int
) -> NDArray[np.uint8]:
    """The ``length`` bytes of each range ``wanted`` (all of one length), one row per range.

    Each request's ranges are cut out as it arrives and its body dropped,
    so memory is bounded by the answer (``N x length``) and the requests
    in flight, not by the bytes the plan moves; merged requests are cut at
    :data:`POINT_PART` bytes for the same reason.
    """
    plan, via = choose(
        source.files, wanted, gap, what, direct=source.direct, range_gap=POINT_RANGE_GAP,
        part=POINT_PART,
    )  # fmt: skip
    out = np.empty((len(plan.request), length), dtype=np.uint8)
    order = np.argsort(plan.request, kind="stable")
    by_request = plan.request[order]
    async for batch in arrivals(source.chunks, plan, via, wanted, what):
        for a in batch:
            lo, hi = np.searchsorted(by_request, [a.first, a.first + a.at.size])
            idx = order[lo:hi]
            begin = a.at[plan.request[idx] - a.first] + plan.offset[idx]
            buf = np.frombuffer(a.data, dtype=np.uint8)
            if idx.size and int(begin.max()) + length > buf.size:
                raise _short(plan, int(plan.request[idx[int(np.argmax(begin))]]), what)
            out[idx] = sliding_window_view(buf, length)[begin]
    return out


def _short(plan: Plan, request: int, what: str) -> SourceUnavailableError:
    return SourceUnavailableError(
        f"{what}: the answer for {plan.keys[request]} holds fewer bytes than asked; the "
        "transfer was cut or the file is shorter than indexed. Retry, or run `tessera-vz verify`"
    )


def landed(plan: Plan, got: Sequence[Arrival]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """For each request of ``plan``: the index in ``got`` of its arrival and its offset there."""
    src = np.full(len(plan.keys), -1, np.int64)
    pos = np.zeros(len(plan.keys), np.int64)
    for k, a in enumerate(got):
        src[a.first : a.first + a.at.size] = k
        pos[a.first : a.first + a.at.size] = a.at
    return src, pos
