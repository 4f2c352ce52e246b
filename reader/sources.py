"""The original tile files: stores on their roots and conditional ranged reads.

A source root is where a TESSERA tree lives (``file://``, ``http(s)://`` or
``s3://``); the index records it as a virtual chunk container and every
tile's paths, offsets and checksums in the year's ``tiles`` table. The
indexer probes headers through these stores. The reader uses them where
Icechunk's unit of fetch, one virtual chunk per request, would multiply
requests: a window over many rows of a tile whose chunks are one or a few
rows long is one contiguous range of the file, and a cluster of points
needs a few hundred kilobytes of it. Such reads keep every guarantee of a
read through the Icechunk store: only roots the caller authorised are read,
the checksum recorded in the index is sent as a precondition
(``If-Match`` with an ETag, ``If-Unmodified-Since`` with a last-modified
time) so a changed file fails instead of returning other bytes, and the
same retries and timeouts bound every request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

import aiohttp
import numpy as np
import obstore
import obstore.store
from numpy.typing import NDArray
from obstore.exceptions import NotFoundError, PreconditionError

from . import client, receive
from .byteranges import MalformedRangesError, locate, range_header
from .errors import ConfigurationError, SourceChangedError, SourceUnavailableError
from .receive import ReceiveError
from .s3 import s3_settings, split_options

if TYPE_CHECKING:
    from obstore import GetOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceRoot:
    """A normalised tree root: ``url`` always ends with ``/``."""

    url: str

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def local_path(self) -> str:
        """Filesystem path of a ``file://`` root (percent-decoded: ``%20`` is a space)."""
        return unquote(urlsplit(self.url).path)

    def url_of(self, rel: str) -> str:
        """Absolute URL of a path relative to the root."""
        return self.url + rel


def object_store(root: SourceRoot, *, options: dict[str, Any] | None = None) -> Any:
    """An obstore store rooted at ``root``.

    Credentials and endpoints for S3 come from the environment the way
    obstore reads them (``AWS_*`` variables) plus explicit ``options``; they
    are never written anywhere by us.
    """
    opts = dict(options or {})
    retry = opts.pop("retry_config", None)
    client = opts.pop("client_options", {})
    if root.scheme == "file":
        return obstore.store.LocalStore(root.local_path)
    if root.scheme in ("http", "https"):
        if root.scheme == "http":
            client = {"allow_http": True, **client}
        return obstore.store.HTTPStore.from_url(root.url, client_options=client, retry_config=retry)
    # Our S3 keys (endpoint_url, anonymous, …) resolved with the AWS_* environment;
    # any other key is passed to obstore's S3 config as it is.
    s3, raw = split_options(opts)
    return s3_settings(s3).obstore(
        root.url,
        config=cast(Any, raw or None),
        client_options=client or None,
        retry_config=retry,
    )


#: First wait before a retry and the longest one (doubling in between), for
#: obstore's requests and for multi-range requests alike.
BACKOFF = 0.1
MAX_BACKOFF = 5.0


def retry_options(
    *,
    retries: int,
    timeout: float,
    connect_timeout: float | None = None,
    backoff: float = BACKOFF,
    max_backoff: float = MAX_BACKOFF,
) -> dict[str, Any]:
    """``retry_config`` and ``client_options`` for :func:`object_store`.

    A mirror under load answers 503, drops connections or stalls; obstore
    retries those with exponential backoff, and ``timeout`` bounds each
    attempt so a stalled server costs at most ``(retries + 1) * timeout``
    per file instead of hanging the run. A file that still fails becomes a
    tile-level failure in the report.
    """
    if retries < 0 or timeout <= 0 or backoff < 0:
        raise ConfigurationError(
            f"retries must be >= 0, timeout > 0 and backoff >= 0; got retries={retries}, "
            f"timeout={timeout}, backoff={backoff}"
        )
    connect = connect_timeout if connect_timeout is not None else min(timeout, 5.0)
    return {
        "retry_config": {
            "max_retries": int(retries),
            "backoff": {
                "init_backoff": dt.timedelta(seconds=backoff),
                "max_backoff": dt.timedelta(seconds=max(backoff, max_backoff)),
                "base": 2,
            },
            "retry_timeout": dt.timedelta(seconds=(retries + 1) * (timeout + max_backoff)),
        },
        "client_options": {
            "timeout": dt.timedelta(seconds=timeout),
            "connect_timeout": dt.timedelta(seconds=connect),
        },
    }


def checksum_text(checksum: str | dt.datetime) -> str:
    """Printable form of a checksum, for the tiles table and reports."""
    if isinstance(checksum, dt.datetime):
        return checksum.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return checksum


def checksum_value(text: str) -> str | dt.datetime:
    """Inverse of :func:`checksum_text`."""
    if len(text) == 20 and text.endswith("Z") and text[4] == "-":
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return text


#: Merged ranges are cut into requests of about this size, fetched in
#: parallel: one stream over loopback or a mirror moves less than several.
PART = 8 << 20
#: Single ranges up to this many bytes go through our HTTP clients, which
#: ask for quick ACKs: through obstore, 179 of 200 reads of 88,912 bytes from
#: nginx (two TCP segments on loopback) waited 44 ms for a delayed ACK, none
#: through ours. Longer ranges (many segments, ACKed as they come) go through
#: obstore, whose Rust client collects megabytes in a buffer of its own
#: faster than a Python client, unless they land in place (:meth:`get_into`).
QUICK_ACK_LIMIT = 1 << 20
#: Requests in flight per reader, like Icechunk's partial-value concurrency.
CONCURRENCY = 64
#: Answers worth another try, as obstore retries them.
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class SourceFiles:
    """Conditional ranged reads from the authorised source roots of an index.

    Holds one obstore store per root (they pool connections), so it is
    state worth a class. ``roots`` are the container URL prefixes the
    caller authorised; a URL under no such root is refused, never read.

    Parameters
    ----------
    roots
        Authorised source root URLs (``…/`` terminated).
    s3_options
        Endpoint, region, anonymous access or credentials for ``s3://``
        roots, as :func:`~tessera_vz.reader.s3.s3_settings` takes them.
    retries, timeout
        Per-request retries with backoff and the limit of each attempt.
    """

    def __init__(
        self,
        roots: Iterable[str] = (),
        *,
        s3_options: Mapping[str, Any] | None = None,
        retries: int = 3,
        timeout: float = 30.0,
    ) -> None:
        self._roots: set[str] = set()
        #: HTTP roots that answered a multi-range request with the whole file.
        self._single: set[str] = set()
        self._retries, self._timeout = retries, timeout
        self._options = {
            **dict(s3_options or {}),
            **retry_options(retries=retries, timeout=timeout),
        }
        self._stores: dict[str, Any] = {}
        self._limits: dict[Any, asyncio.Semaphore] = {}
        self.allow(roots)

    def allow(self, roots: Iterable[str]) -> None:
        """Authorise more roots (e.g. those of another zone's repository)."""
        self._roots |= {r if r.endswith("/") else r + "/" for r in roots}

    def root_of(self, url: str) -> str | None:
        """The authorised root holding ``url``, or ``None``."""
        best = None
        for root in self._roots:
            if url.startswith(root) and (best is None or len(root) > len(best)):
                best = root
        return best

    def _authorised(self, url: str, what: str) -> str:
        root = self.root_of(url)
        if root is None:
            raise ConfigurationError(
                f"{what}: {url} is under no source you authorised; pass "
                "allow_local_sources=True (CLI: --allow-local-sources) for file:// sources you "
                "trust, or list its root in allowed_sources"
            )
        return root

    def multi_range(self, url: str) -> bool:
        """Whether ``url`` is read with multi-range requests (HTTP roots that serve them)."""
        root = self.root_of(url)
        http = root is not None and root.startswith(("http:", "https:"))
        return http and root not in self._single

    def _store(self, root: str) -> Any:
        if root not in self._stores:
            self._stores[root] = object_store(SourceRoot(root), options=dict(self._options))
        return self._stores[root]

    async def get(self, url: str, start: int, end: int, checksum: str, what: str) -> Any:
        """Bytes ``[start, end)`` of ``url``, if the file still matches ``checksum``.

        Returns obstore ``Bytes`` (a zero-copy buffer). Raises
        :class:`SourceChangedError` when the file changed after indexing
        and :class:`SourceUnavailableError` when it cannot be read or
        answers with fewer bytes than asked.
        """
        root = self._authorised(url, what)
        # Paths in the tiles table are relative to the root, as the indexer read them.
        store, path = self._store(root), url[len(root) :]
        async with self._limit():
            try:
                opts = cast("GetOptions", {"range": (start, end), **precondition(checksum)})
                got = await obstore.get_async(store, path, options=opts)
                data = await got.bytes_async()
            except PreconditionError:
                raise _changed(url, checksum, what) from None
            except NotFoundError:
                raise _gone(url, what) from None
            except Exception as exc:  # obstore's hierarchy: network, timeout, server errors
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise SourceUnavailableError(f"{what}: {url}: {first}") from None
        if len(data) != end - start:
            raise SourceUnavailableError(
                f"{what}: {url} answered {len(data)} bytes for the {end - start} bytes at "
                f"{start}; the file is shorter than indexed or the transfer was cut. Retry, "
                "or run `tessera-vz verify`"
            )
        return data

    def _limit(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        return self._limits.setdefault(loop, asyncio.Semaphore(CONCURRENCY))

    async def get_ranges(
        self,
        url: str,
        starts: Sequence[int],
        ends: Sequence[int],
        checksum: str,
        what: str,
    ) -> tuple[Any, NDArray[np.int64]]:
        """Bytes ``[start, end)`` of ``url`` for each range, in as few requests as it allows.

        Returns one buffer and where each range begins in it: a multi-range
        answer stays the one body the server sent, so a caller cuts hundreds
        of ranges out in one vectorised step. Ranges of an HTTP root that
        serves multi-range requests share one request. HTTP requests go
        through :mod:`~tessera_vz.reader.receive` (plain ``http://`` without
        a proxy) or the pooled aiohttp client, both asking for quick ACKs;
        a single range over :data:`QUICK_ACK_LIMIT` (unless it lands in
        place, :meth:`get_into`) and every S3 or file range go through
        obstore, a request per range.

        Same guarantees as :meth:`get`: an authorised root, the checksum as
        a precondition, retries with backoff and a timeout per attempt, and
        every range whole. A server that ignores multi-range requests
        (answering 200 with the whole file) is told apart before its body is
        read; that root is then read range by range.
        """
        root = self._authorised(url, what)
        http = root.startswith(("http:", "https:"))
        several = len(starts) > 1
        if http and (
            root not in self._single if several else ends[0] - starts[0] <= QUICK_ACK_LIMIT
        ):
            async with self._limit():
                got = await self._ranged(root, url, starts, ends, checksum, what)
            if got is not None:
                return got
            if several and root not in self._single:
                self._single.add(root)
                log.warning(
                    "%s answers multi-range requests with whole files; reading its ranges "
                    "one request each",
                    root,
                )
        if not several:  # obstore's buffer as it is: no copy of a long range
            return await self.get(url, starts[0], ends[0], checksum, what), np.zeros(1, np.int64)
        blobs = await asyncio.gather(
            *(self.get(url, s, e, checksum, what) for s, e in zip(starts, ends, strict=True))
        )
        at = np.cumsum([0, *(e - s for s, e in zip(starts, ends, strict=True))])[:-1]
        return b"".join(blobs), at.astype(np.int64)

    async def get_into(
        self, url: str, start: int, end: int, checksum: str, what: str, into: Sequence[memoryview]
    ) -> None:
        """Bytes ``[start, end)`` of ``url`` written into ``into``, as :meth:`get` reads them.

        ``into`` are consecutive byte views whose lengths add up to
        ``end - start`` (a window's row spans, with throwaway views for the
        bytes between them). Through :mod:`~tessera_vz.reader.receive` the
        bytes land there as they arrive; any other way they are copied.
        """
        root = self._authorised(url, what)
        http = root.startswith(("http:", "https:"))
        if http and (_receivable(root) or end - start <= QUICK_ACK_LIMIT):
            async with self._limit():
                got = await self._ranged(root, url, [start], [end], checksum, what, into)
            if got is not None:
                return
        _spill(await self.get(url, start, end, checksum, what), into)

    async def _ranged(
        self,
        root: str,
        url: str,
        starts: Sequence[int],
        ends: Sequence[int],
        checksum: str,
        what: str,
        into: Sequence[memoryview] | None = None,
    ) -> tuple[Any, NDArray[np.int64]] | None:
        """One ranged request with retries; ``None`` if the server ignored the ranges.

        With ``into`` (one range) the body lands there and the buffer
        returned is ``None``.
        """
        headers = {"Range": range_header(starts, ends), **http_precondition(checksum)}
        send = _by_receive if _receivable(root) else _by_aiohttp
        error = ""
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(min(MAX_BACKOFF, BACKOFF * 2 ** (attempt - 1)))
            try:
                status, reason, got = await send(
                    root, url, headers, starts, ends, into, self._timeout
                )
                if status == 206:
                    return got
                if status == 200:
                    return None  # the body was never read: no whole tile for a few ranges
                if status == 412:
                    raise _changed(url, checksum, what)
                if status in (404, 410):
                    raise _gone(url, what)
                error = f"HTTP {status} {reason}".strip()
                if status not in _RETRY_STATUS:
                    break
            except (MalformedRangesError, ReceiveError, aiohttp.ClientError, TimeoutError) as exc:
                text = str(exc).strip()
                error = text.splitlines()[0] if text else type(exc).__name__
        raise SourceUnavailableError(
            f"{what}: {url}: {error} (after {attempt + 1} attempts; a cut transfer or a file "
            "shorter than indexed). Retry, or run `tessera-vz verify`"
        )


#: What an HTTP client returns for a ranged request: status, reason, and for
#: a 206 the body (``None`` if it landed in the caller's views) with where
#: each range begins in it.
_Sent = tuple[int, str, tuple[Any, NDArray[np.int64]] | None]
_AT0 = np.zeros(1, np.int64)


def _receivable(root: str) -> bool:
    """Whether :mod:`~tessera_vz.reader.receive` reads ``root`` (plain HTTP, no proxy)."""
    return receive.handles(root) and client.proxy_for(root) is None


def _spill(data: Any, into: Sequence[memoryview]) -> None:
    """Copy a range's bytes into consecutive views, for clients that cannot receive in place."""
    got, at = memoryview(data).cast("B"), 0
    for dest in into:
        dest[:] = got[at : at + len(dest)]
        at += len(dest)


def _single_part(crange: str | None, start: int, end: int) -> None:
    """Check that a 206 for one range holds exactly that range."""
    expect = f"bytes {start}-{end - 1}/"
    if crange is None or not crange.strip().startswith(expect):
        raise MalformedRangesError(
            f"asked for bytes {start}-{end - 1}, the answer holds {crange or 'no Content-Range'}"
        )


async def _by_receive(
    root: str,
    url: str,
    headers: dict[str, str],
    starts: Sequence[int],
    ends: Sequence[int],
    into: Sequence[memoryview] | None,
    timeout: float,
) -> _Sent:
    """A ranged request through :mod:`~tessera_vz.reader.receive`: the body lands in place."""
    body = bytearray()

    def want(head: receive.Head) -> Sequence[memoryview] | None:
        nonlocal body
        if head.status != 206:
            return None  # an error's page, or a whole file: never read
        if into is not None:
            _single_part(head.headers.get("content-range"), starts[0], ends[0])
            return into
        length = head.headers.get("content-length", "")
        if not length.isdigit():
            raise ReceiveError("a 206 answer without a Content-Length")
        body = bytearray(int(length))
        return [memoryview(body)]

    head = await receive.get(url, headers, want, timeout)
    if head.status != 206:
        return head.status, head.reason, None
    if into is not None:
        return 206, head.reason, (None, _AT0)
    at = locate(body, head.headers.get("content-type", ""), head.headers.get("content-range"),
                starts, ends)  # fmt: skip
    return 206, head.reason, (body, at)


async def _by_aiohttp(
    root: str,
    url: str,
    headers: dict[str, str],
    starts: Sequence[int],
    ends: Sequence[int],
    into: Sequence[memoryview] | None,
    timeout: float,
) -> _Sent:
    """A ranged request through the pooled aiohttp client (HTTPS, proxies)."""
    http, proxy = client.session(), client.proxy_for(root)
    limit = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 5.0))
    async with http.get(url, headers=headers, proxy=proxy, timeout=limit) as resp:
        client.quick_ack(resp)
        if resp.status != 206:
            resp.close()  # never read a whole tile for a few ranges, nor an error page
            return resp.status, resp.reason or "", None
        body = await client.read_body(resp)
        ctype, crange = resp.headers.get("Content-Type", ""), resp.headers.get("Content-Range")
    if into is None:
        return 206, resp.reason or "", (body, locate(body, ctype, crange, starts, ends))
    _single_part(crange, starts[0], ends[0])
    if len(body) != ends[0] - starts[0]:
        raise MalformedRangesError(f"{len(body)} bytes for a range of {ends[0] - starts[0]}")
    _spill(body, into)
    return 206, resp.reason or "", (None, _AT0)


def _changed(url: str, checksum: str, what: str) -> SourceChangedError:
    return SourceChangedError(
        f"{what}: {url} no longer matches the checksum recorded when it was indexed "
        f"({checksum}). The source file changed after it was indexed; re-run "
        "`tessera-vz index` for this source to index its new bytes"
    )


def _gone(url: str, what: str) -> SourceUnavailableError:
    return SourceUnavailableError(
        f"{what}: {url} is gone (not found); run `tessera-vz verify` to list "
        "missing tiles and `tessera-vz index` to drop them"
    )


@functools.lru_cache(maxsize=65536)
def http_precondition(checksum: str) -> dict[str, str]:
    """:func:`precondition` as HTTP request headers."""
    value = checksum_value(checksum)
    if isinstance(value, dt.datetime):
        return {"If-Unmodified-Since": email.utils.format_datetime(value.astimezone(dt.UTC), True)}
    return {"If-Match": value}


@functools.lru_cache(maxsize=65536)
def precondition(checksum: str) -> dict[str, Any]:
    """The request precondition that enforces a recorded checksum (tiles-table text)."""
    value = checksum_value(checksum)
    if isinstance(value, dt.datetime):
        return {"if_unmodified_since": value}
    return {"if_match": value}
