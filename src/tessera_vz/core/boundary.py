"""The boundary: every byte tessera-vz fetches outside Icechunk comes through here.

Header probes and ``verify`` (the indexer), point, window and multi-range
reads (the reader) and manifests all read source files through
:class:`SourceFiles`, which keeps what every read shares in one place:
which roots are authorised, the retry policy and its limits, the number of
requests in flight, and the errors the caller sees. The bytes themselves
travel through one backend per source root, chosen once by its scheme
(:mod:`~tessera_vz.core.transport`): ``http(s)://`` through aiohttp
(:mod:`~tessera_vz.core.transport_http`), ``s3://`` and ``file://``
through obstore (:mod:`~tessera_vz.core.transport_store`). Its invariants,
each proven by a test against a misbehaving server (``docs/reliability.md``):

- only files under roots the caller authorised are read, and redirects are
  followed only to authorised origins; loopback, private, link-local and
  multicast addresses only where the user allowed them
  (:mod:`~tessera_vz.core.permissions`, checked on the address connected to);
- the bytes returned for a range are exactly that range (``Content-Range``
  and length checked; multipart parts cover the request without overlap or
  conflict) or an error, never other data;
- memory is bounded by what was asked, whatever the headers claim;
- the checksum the index recorded travels as a precondition (``If-Match``
  with an S3 ETag, ``If-Unmodified-Since`` with a last-modified time), so a
  file changed after indexing fails instead of returning other bytes; values
  read from a repository are validated before they become headers
  (:mod:`~tessera_vz.core.checksums`);
- one :class:`~tessera_vz.core.options.RetryPolicy` bounds every request;
- every failure is :class:`SourceUnavailableError` or
  :class:`SourceChangedError` naming what was read and the URL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Buffer, Callable, Iterable, Sequence
from pathlib import Path

import aiohttp
import numpy as np
from obstore.exceptions import BaseError as ObstoreError

from tessera_vz.core import http, range_memory
from tessera_vz.core.checksums import (
    checksum_text,
    checksum_value,
    http_precondition,
    precondition,
)
from tessera_vz.core.errors import (
    ConfigurationError,
    SourceChangedError,
    SourceNotFoundError,
    SourceUnavailableError,
)
from tessera_vz.core.options import ReadOptions, RetryPolicy
from tessera_vz.core.permissions import private_permitted
from tessera_vz.core.transport import (
    FileChangedError,
    FileGoneError,
    IndexedFile,
    ObjectFacts,
    Ranges,
    Transport,
)
from tessera_vz.core.transport_http import HttpTransport
from tessera_vz.core.transport_store import ObjectStoreTransport, object_store
from tessera_vz.core.urls import SourceRoot, join, under

log = logging.getLogger(__name__)

#: Merged ranges are cut into requests of about this size, fetched in
#: parallel: one stream over loopback or a mirror moves less than several.
PART = 8 << 20
#: Requests in flight per reader, like Icechunk's partial-value concurrency.
CONCURRENCY = 64
#: Ranges of a single-range root closer than this share one request: a
#: request costs a round trip (~20 ms on a real mirror), more than the bytes.
SINGLE_GAP = 16 * 1024
#: The largest object fetched whole (a manifest of the whole archive is ~0.5 GB).
MAX_OBJECT = 4 << 30

#: What a backend's client may raise for a failed attempt; :func:`~.http.classify`
#: words each and says whether another attempt may succeed. ``OSError`` covers
#: ``TimeoutError``, a reset connection and our own ``AnswerError``.
_CLIENT_ERRORS = (aiohttp.ClientError, ObstoreError, OSError)


class SourceFiles:
    """Checked, conditional reads of the authorised source files of an index.

    State is real here (one backend per root, which pools connections and
    learns whether the root serves multi-range requests; the authorised
    roots), so a class. ``roots`` are the URL prefixes the caller
    authorised: a file under no such root is refused before any request, and
    a redirect is followed only to a URL under one.

    Every read takes a ``purpose``: what the read is for (``"reading the
    manifest"``, ``"reading points, tile grid_0.85_49.95"``), the first words
    of every error it raises.

    Parameters
    ----------
    roots
        Authorised source root URLs.
    options
        The reader's :class:`~tessera_vz.core.options.ReadOptions`
        (retry policy, S3 settings, extra CA).
    """

    def __init__(self, roots: Iterable[str] = (), options: ReadOptions | None = None) -> None:
        self.options = options if options is not None else ReadOptions()
        self.policy: RetryPolicy = self.options.policy
        self._roots: set[str] = set()
        self._ca = self.options.trusted_ca()
        self._obstore_options = {**self.options.s3, **self.policy.obstore()}
        if self._ca is not None:  # S3 endpoints behind a private CA (obstore adds it to its roots)
            self._obstore_options["client_options"]["root_certificate"] = Path(self._ca).read_text()
        self._transports: dict[str, Transport] = {}
        self._limits: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        #: Roots that answered a multi-range request with one (no trial needed).
        self._confirmed: set[str] = set()
        self._trials: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Lock] = {}
        self.allow(roots)

    # -- authorisation -------------------------------------------------------
    def allow(self, roots: Iterable[str]) -> None:
        """Authorise more roots (e.g. those of another zone's repository)."""
        self._roots |= {r if r.endswith("/") else r + "/" for r in roots}

    def root_of(self, url: str) -> str | None:
        """The longest authorised root holding ``url``, or ``None``.

        Matched by parsed scheme, host, port and path segments
        (:func:`~tessera_vz.core.urls.under`), never as a string prefix; a
        URL with ``.``/``..`` segments lies under no root.
        """
        best = None
        for root in self._roots:
            if (best is None or len(root) > len(best)) and under(url, root):
                best = root
        return best

    def allowed(self, url: str) -> bool:
        """Whether a redirect may lead to ``url`` (under an authorised root)."""
        return any(under(url, root) for root in self._roots)

    def _transport(self, url: str, purpose: str) -> Transport:
        """The backend of ``url``'s root; a URL under no authorised root is refused."""
        root = self.root_of(url)
        if root is None:
            raise ConfigurationError(
                f"{purpose}: {url} is not authorised (it lies under no source you trust); pass "
                "allow_local_sources=True (CLI: --allow-local-sources) for file:// sources you "
                "trust, or list its root in allowed_sources (CLI: --allow-source)"
            )
        return self._transport_of(root)

    def _transport_of(self, root: str) -> Transport:
        """The backend of an authorised root, made on first use: the one test of its scheme."""
        got = self._transports.get(root)
        if got is None:
            source = SourceRoot(root)
            if source.is_http:
                private_ok = private_permitted(root, self.options)
                got = HttpTransport(self.allowed, self._ca, self.policy.connect, private_ok)
            else:
                got = ObjectStoreTransport(source, self._obstore_options)
            self._transports[root] = got
        return got

    def multi_range(self, url: str) -> bool:
        """Whether ``url`` is read with multi-range requests (HTTP roots that serve them).

        A root whose origin is remembered as single-range (by this process or
        an earlier one: :mod:`~tessera_vz.core.range_memory`) is not.
        """
        root = self.root_of(url)
        if root is None:
            return False
        files = self._transport_of(root)
        if files.multi_range and root not in self._confirmed and range_memory.single_range(root):
            files.multi_range = False
        return files.multi_range

    # -- reads -----------------------------------------------------------------
    async def get(
        self, url: str, start: int, end: int, checksum: str | None, purpose: str,
        size: int | None = None,
    ) -> Buffer:  # fmt: skip
        """Bytes ``[start, end)`` of ``url``, if the file still matches ``checksum``.

        Returns a bytes-like buffer of exactly ``end - start`` bytes.
        ``size`` (as indexed) lets an answer naming another file size fail
        as changed. ``checksum=None`` sends no precondition (a header probe's
        first read).
        """
        files = self._transport(url, purpose)
        _check_checksum(checksum, url, purpose)
        return await self._attempts(
            url, purpose, lambda: files.read(IndexedFile(url, checksum, size), start, end)
        )

    async def get_into(
        self, url: str, start: int, end: int, checksum: str | None, purpose: str,
        into: Sequence[memoryview], size: int | None = None,
    ) -> None:  # fmt: skip
        """Bytes ``[start, end)`` of ``url`` written into consecutive views ``into``.

        The views' lengths add up to ``end - start`` (a window's row spans,
        with throwaway views for the bytes between them). Over HTTP the bytes
        are copied there as they arrive; an attempt that fails part-way is
        repeated from the first byte, overwriting what it left.
        """
        files = self._transport(url, purpose)
        _check_checksum(checksum, url, purpose)
        await self._attempts(
            url,
            purpose,
            lambda: files.read_into(IndexedFile(url, checksum, size), start, end, into),
        )

    async def get_ranges(
        self,
        url: str,
        starts: Sequence[int],
        ends: Sequence[int],
        checksum: str | None,
        purpose: str,
        size: int | None = None,
    ) -> Ranges:
        """Bytes ``[start, end)`` of ``url`` for each range, in as few requests as it allows.

        Returns one buffer and where each range begins in it: a multi-range
        answer stays the one body the server sent, so a caller cuts hundreds
        of ranges out in one vectorised step. Ranges of a root that serves
        multi-range requests share one request. The first multi-range
        request to an origin not yet known goes alone (the others wait for
        its answer), so an origin that answers with the whole file (``200``,
        recognised before its body is read) does so once: it is remembered
        (:mod:`~tessera_vz.core.range_memory`, for this process and later
        ones) and read in single ranges, coalesced across small gaps, from
        then on, as S3 is.
        """
        files = self._transport(url, purpose)
        if len(starts) == 1:
            one = await self.get(url, starts[0], ends[0], checksum, purpose, size)
            return one, np.zeros(1, np.int64)
        root = self.root_of(url) or url

        async def multi() -> Ranges | None:
            got = await self._attempts(
                url,
                purpose,
                lambda: files.read_ranges(IndexedFile(url, checksum, size), starts, ends),
            )
            if got is None:
                self._learn(root, files)
            else:
                self._confirmed.add(root)
            return got

        if self.multi_range(url):
            _check_checksum(checksum, url, purpose)
            trial = self._trial(root)
            if trial is not None:  # the first request to this root goes alone
                async with trial:
                    if root not in self._confirmed and self.multi_range(url):
                        got = await multi()
                        if got is not None:
                            return got
            if self.multi_range(url):
                got = await multi()
                if got is not None:
                    return got
        return await self._single_ranges(url, starts, ends, checksum, purpose, size)

    async def _single_ranges(
        self, url: str, starts: Sequence[int], ends: Sequence[int], checksum: str | None,
        purpose: str, size: int | None,
    ) -> Ranges:  # fmt: skip
        """Ranges read one request each, those closer than :data:`SINGLE_GAP` merged."""
        s, e = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
        order = np.argsort(s, kind="stable")
        reach = np.maximum.accumulate(e[order])
        new = np.ones(s.size, dtype=bool)
        new[1:] = s[order][1:] > reach[:-1] + SINGLE_GAP
        first = np.flatnonzero(new)
        span_start = s[order][first]
        span_end = reach[np.append(first[1:], s.size) - 1]
        blobs = await asyncio.gather(
            *(
                self.get(url, a, b, checksum, purpose, size)
                for a, b in zip(span_start.tolist(), span_end.tolist(), strict=True)
            )
        )
        base = np.cumsum(span_end - span_start) - (span_end - span_start)
        span = np.cumsum(new) - 1
        at = np.empty(s.size, np.int64)
        at[order] = base[span] + s[order] - span_start[span]
        return b"".join(blobs), at

    def _trial(self, root: str) -> asyncio.Lock | None:
        """The lock the first multi-range request to an unconfirmed root holds, else ``None``."""
        if root in self._confirmed:
            return None
        key = (asyncio.get_running_loop(), root)
        return self._trials.setdefault(key, asyncio.Lock())

    def _learn(self, root: str, files: Transport) -> None:
        """``root`` answered a multi-range request with the whole file: single ranges from now."""
        files.multi_range = False
        range_memory.learn(root)
        log.warning(
            "%s answers multi-range requests with whole files; reading its ranges one "
            "request each from now on (remembered in the cache directory)",
            root,
        )

    async def probe(self, url: str, nbytes: int, purpose: str) -> tuple[bytes, ObjectFacts]:
        """The first ``nbytes`` of a file (fewer if it is shorter), its size and validators.

        One ranged GET: the answer's ``Content-Range`` carries the size and
        its headers the ETag and last-modified time, so no HEAD is needed.
        """
        files = self._transport(url, purpose)
        return await self._attempts(url, purpose, lambda: files.probe(url, nbytes))

    async def head(self, url: str, purpose: str) -> ObjectFacts:
        """Size and validators of a file, without its bytes (``verify``)."""
        files = self._transport(url, purpose)
        return await self._attempts(url, purpose, lambda: files.head(url))

    async def fetch(self, url: str, purpose: str, limit: int = MAX_OBJECT) -> bytes:
        """A whole (small) object such as a manifest, at most ``limit`` bytes."""
        files = self._transport(url, purpose)
        return await self._attempts(url, purpose, lambda: files.fetch(url, limit))

    # -- one place for limits, retries and errors --------------------------------------
    def _limit(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        return self._limits.setdefault(loop, asyncio.Semaphore(CONCURRENCY))

    async def _attempts[T](self, url: str, purpose: str, once: Callable[[], Awaitable[T]]) -> T:
        """Run ``once`` under the retry policy; every failure becomes one of our errors."""
        reason, tries, again = "", 0, False
        for delay in self.policy.delays():
            if delay:
                await asyncio.sleep(delay)
            tries += 1
            try:
                async with self._limit(), asyncio.timeout(self.policy.timeout):
                    return await once()
            except FileChangedError as exc:
                raise SourceChangedError(f"{_named(purpose)}{url}{exc}") from None
            except FileGoneError:
                raise _gone(url, purpose) from None
            except (SourceChangedError, SourceUnavailableError, ConfigurationError):
                raise
            except MemoryError:
                reason, again = "the answer did not fit in memory", False
                break
            except _CLIENT_ERRORS as exc:  # any client's failure, classified once
                reason, again = http.classify(exc)
                if not again:
                    break
        attempts = f" (after {tries} attempts)" if tries > 1 else ""
        error = SourceUnavailableError(
            f"{_named(purpose)}{url}: {reason}{attempts}. Retry later, or run "
            "`tessera-vz verify` to check the sources"
        )
        error.transient = again  # a later try may succeed (503, reset, timeout)
        raise error


def _check_checksum(checksum: str | None, url: str, purpose: str) -> None:
    """Refuse a recorded checksum that must not become a request header."""
    if checksum is None:
        return
    try:
        checksum_value(checksum)
    except ValueError as exc:
        raise SourceUnavailableError(
            f"{purpose}: {url}: the index records {exc}; the repository is damaged or was "
            "crafted, so this file is not read. Re-index it with `tessera-vz index`"
        ) from None


def _named(purpose: str) -> str:
    """The start of an error message: what the read was for, if anything."""
    return f"{purpose}: " if purpose else ""


def _gone(url: str, purpose: str) -> SourceNotFoundError:
    return SourceNotFoundError(
        f"{_named(purpose)}{url} is gone (not found); run `tessera-vz verify` to "
        "list missing tiles and `tessera-vz index` to drop them"
    )


__all__ = [
    "CONCURRENCY",
    "MAX_OBJECT",
    "PART",
    "ObjectFacts",
    "SourceFiles",
    "SourceRoot",
    "checksum_text",
    "checksum_value",
    "http_precondition",
    "join",
    "object_store",
    "precondition",
]
