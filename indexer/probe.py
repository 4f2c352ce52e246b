"""Read every file's header with one small concurrent ranged GET.

The GET also returns the object's size, ETag and last-modified time, which
is all the indexer needs besides the header: no HEAD requests, no data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import obstore
from obstore.exceptions import NotFoundError
from tessera_vz.reader.errors import NpyFormatError
from tessera_vz.reader.header import PROBE_BYTES, NpyHeader, header_length, parse_header

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    """A parsed header and the object facts the same response carried."""

    header: NpyHeader
    size: int
    meta: dict[str, Any]
    bytes_read: int
    requests: int


class ProbeError(Exception):
    """A file's header could not be read; ``reason`` is for the report."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


async def probe_file(store: Any, path: str) -> Probe:
    """Fetch and parse the header of one file."""
    try:
        result = await obstore.get_async(store, path, options={"range": (0, PROBE_BYTES)})
        prefix = (await result.bytes_async()).to_bytes()
        meta = dict(result.meta)
        size = int(cast(int, meta["size"]))
        requests, nread = 1, len(prefix)
        need = header_length(prefix)
        if need > len(prefix) and size >= need:
            more = await obstore.get_range_async(store, path, start=len(prefix), end=need)
            prefix += more.to_bytes()
            requests, nread = 2, need
        header = parse_header(prefix)
    except NotFoundError:
        raise ProbeError(
            path, "file not found (404): the object is missing from the source"
        ) from None
    except NpyFormatError as exc:
        raise ProbeError(path, str(exc)) from None
    except Exception as exc:  # obstore's network errors: report, never abort the run
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProbeError(path, f"could not read header: {type(exc).__name__}: {first}") from None
    return Probe(header=header, size=size, meta=meta, bytes_read=nread, requests=requests)


async def probe_all(
    store: Any,
    paths: Iterable[str],
    *,
    concurrency: int = 64,
    on_done: Callable[[int], None] | None = None,
) -> dict[str, Probe | ProbeError]:
    """Probe many files with at most ``concurrency`` requests in flight."""
    limit = asyncio.Semaphore(concurrency)

    async def one(path: str) -> tuple[str, Probe | ProbeError]:
        async with limit:
            try:
                res: Probe | ProbeError = await probe_file(store, path)
            except ProbeError as exc:
                res = exc
        if on_done is not None:
            on_done(1)
        return path, res

    pairs = await asyncio.gather(*(one(p) for p in dict.fromkeys(paths)))
    return dict(pairs)
