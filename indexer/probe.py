"""Read every file's header with one small concurrent ranged GET.

The GET also returns the object's size, ETag and last-modified time, which
is all the indexer needs besides the header: no HEAD requests, no data.
Every request goes through the reader's boundary
(:class:`~tessera_vz.reader.sources.SourceFiles`): the same checks of each
answer, redirects only to authorised origins, one retry policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tessera_vz.reader.errors import (
    NpyFormatError,
    SourceChangedError,
    SourceNotFoundError,
    SourceUnavailableError,
)
from tessera_vz.reader.header import PROBE_BYTES, NpyHeader, header_length, parse_header
from tessera_vz.reader.sources import SourceFiles, checksum_text
from tessera_vz.reader.urls import SourceRoot

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


async def probe_file(files: SourceFiles, root: SourceRoot, path: str) -> Probe:
    """Fetch and parse the header of one file.

    A header longer than the first read is completed with a second read
    that carries the first answer's validator as a precondition, so both
    halves come from the same version of the file.
    """
    url = root.url_of(path)
    what = "reading the header"
    try:
        prefix, facts = await files.probe(url, PROBE_BYTES, what)
        requests, nread = 1, len(prefix)
        need = header_length(prefix)
        if need > len(prefix) and facts.size >= need:
            validator = facts.e_tag if root.scheme == "s3" else facts.last_modified
            checksum = checksum_text(validator) if validator is not None else None
            more = await files.get(url, len(prefix), need, checksum, what, facts.size)
            prefix += bytes(more)
            requests, nread = 2, need
        header = parse_header(prefix)
    except NpyFormatError as exc:
        raise ProbeError(path, str(exc)) from None
    except SourceNotFoundError:
        raise ProbeError(
            path, "file not found (404): the object is missing from the source"
        ) from None
    except (SourceUnavailableError, SourceChangedError) as exc:
        raise ProbeError(path, str(exc)) from None
    return Probe(
        header=header, size=facts.size, meta=facts.meta(), bytes_read=nread, requests=requests
    )


async def probe_all(
    files: SourceFiles,
    root: SourceRoot,
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
                res: Probe | ProbeError = await probe_file(files, root, path)
            except ProbeError as exc:
                res = exc
        if on_done is not None:
            on_done(1)
        return path, res

    pairs = await asyncio.gather(*(one(p) for p in dict.fromkeys(paths)))
    return dict(pairs)
