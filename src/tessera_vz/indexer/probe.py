"""Read every file's header with one small concurrent ranged GET.

The GET also returns the object's size, ETag and last-modified time, which
is all the indexer needs besides the header: no HEAD requests, no data.
Every request goes through the reader's boundary
(:class:`~tessera_vz.core.boundary.SourceFiles`): the same checks of each
answer, redirects only to authorised origins, one retry policy.

A mirror under load fails some requests (503, resets, timeouts). Each probe
retries those itself (``IndexOptions.retries``), but over thousands of files
a few exhaust their retries by bad luck although the file is fine. So
:func:`probe_all` follows the first pass with at most :data:`EXTRA_PASSES`
bounded passes over the files whose failure may clear (never a 404 or a
malformed header), after a pause, re-probing at most
``max(PASS_MIN_FILES, PASS_FRACTION * files)`` files per pass: a few unlucky
files are recovered, while a mirror that is really down is not hammered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tessera_vz.core.boundary import ObjectFacts, SourceFiles, checksum_text
from tessera_vz.core.errors import (
    NpyFormatError,
    SourceChangedError,
    SourceNotFoundError,
    SourceUnavailableError,
    TesseraError,
)
from tessera_vz.core.npy import PROBE_BYTES, NpyHeader, header_length, parse_header
from tessera_vz.core.urls import SourceRoot
from tessera_vz.indexer.roots import checksum_of

log = logging.getLogger(__name__)

#: Extra passes over transiently failed files after the first pass.
EXTRA_PASSES = 2
#: Files re-probed per extra pass: at most max(PASS_MIN_FILES, PASS_FRACTION * files).
PASS_MIN_FILES = 32
PASS_FRACTION = 0.05
#: Pause before the first extra pass; it doubles before each further pass.
PASS_DELAY = 1.0


@dataclass(frozen=True)
class Probe:
    """A parsed header and the object facts the same response carried."""

    header: NpyHeader
    size: int
    meta: dict[str, Any]
    bytes_read: int
    requests: int
    #: Which extra pass read it (0: the first pass; see :func:`probe_all`).
    extra_pass: int = 0


class ProbeError(TesseraError, OSError):
    """A file's header could not be read; ``reason`` is for the report.

    An ``OSError`` like :class:`~tessera_vz.core.errors.SourceUnavailableError`:
    the file could not be read as a tile header (missing, unreachable, or not
    a header we can map).

    ``transient`` says the failure may clear on another try (a 503, a reset,
    a timeout), as opposed to a missing file or a malformed header;
    ``extra_pass`` which extra pass of :func:`probe_all` failed last (0: the first).
    """

    def __init__(self, path: str, reason: str, *, transient: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.transient = transient
        self.extra_pass = 0


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
            checksum = _validator(root, facts)
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
        # Only failures another try may clear (503, resets, timeouts) are
        # re-probed by the extra passes; a lying answer is not.
        raise ProbeError(path, str(exc), transient=getattr(exc, "transient", False)) from None
    return Probe(
        header=header, size=facts.size, meta=facts.meta(), bytes_read=nread, requests=requests
    )


def _validator(root: SourceRoot, facts: ObjectFacts) -> str | None:
    """The first answer's checksum, as the index would record it (None if it has none)."""
    try:
        return checksum_text(checksum_of(root, facts.meta()))
    except ValueError:
        return None


def pass_budget(files: int) -> int:
    """Files one extra pass may re-probe in a run over ``files`` files."""
    return max(PASS_MIN_FILES, math.ceil(PASS_FRACTION * files))


async def probe_all(
    files: SourceFiles,
    root: SourceRoot,
    paths: Iterable[str],
    *,
    concurrency: int = 64,
    on_done: Callable[[int], None] | None = None,
    extra_passes: int = EXTRA_PASSES,
    pass_delays: Sequence[float] | None = None,
) -> dict[str, Probe | ProbeError]:
    """Probe many files with at most ``concurrency`` requests in flight.

    After the first pass, up to ``extra_passes`` passes re-probe the files
    whose failure was transient, within :func:`pass_budget` files per pass,
    each after a pause (``pass_delays[k]`` seconds, default :data:`PASS_DELAY`
    doubling per pass). A result from an extra pass carries its number in
    ``extra_pass``, so the caller can report what the passes recovered. A
    transient failure left over the budget keeps its reason, which says why
    it was not tried again.
    """
    limit = asyncio.Semaphore(concurrency)

    async def one(path: str, report: bool) -> tuple[str, Probe | ProbeError]:
        async with limit:
            try:
                res: Probe | ProbeError = await probe_file(files, root, path)
            except ProbeError as exc:
                res = exc
        if report and on_done is not None:
            on_done(1)
        return path, res

    unique = list(dict.fromkeys(paths))
    results = dict(await asyncio.gather(*(one(p, True) for p in unique)))
    budget = pass_budget(len(unique))
    delays = list(pass_delays) if pass_delays is not None else []
    for k in range(1, extra_passes + 1):
        failed = [p for p, r in results.items() if isinstance(r, ProbeError) and r.transient]
        if not failed:
            break
        retry, left = failed[:budget], failed[budget:]
        for p in left:
            results[p] = _over_budget(results[p], budget)  # type: ignore[arg-type]
        delay = delays[k - 1] if k - 1 < len(delays) else PASS_DELAY * 2 ** (k - 1)
        log.info(
            "extra pass %d/%d: re-probing %d files whose probes failed transiently (%d over "
            "the budget of %d) after %.1f s", k, extra_passes, len(retry), len(left), budget, delay,
        )  # fmt: skip
        await asyncio.sleep(delay)
        for path, res in await asyncio.gather(*(one(p, False) for p in retry)):
            if isinstance(res, Probe):
                res = dataclasses.replace(res, extra_pass=k)
            else:
                res.extra_pass = k
            results[path] = res
    return results


def _over_budget(exc: ProbeError, budget: int) -> ProbeError:
    """The same failure, saying it was not retried (and so no longer transient)."""
    out = ProbeError(
        exc.path,
        f"{exc.reason} (not tried again: more files failed than an extra pass re-probes, "
        f"{budget}; the source looks unhealthy, re-run later)",
    )
    out.extra_pass = exc.extra_pass
    return out
