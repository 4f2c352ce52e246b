"""The boundary: every byte tessera-vz fetches outside Icechunk comes through here.

Header probes and ``verify`` (the indexer), point, window and multi-range
reads (the reader) and manifests all read source files through
:class:`SourceFiles`. ``http(s)://`` sources go through
:mod:`~tessera_vz.core.http` (aiohttp), ``s3://`` and ``file://`` through
obstore. Its invariants, each proven by a test against a misbehaving server
(``docs/reliability.md``):

- only files under roots the caller authorised are read, and redirects are
  followed only to authorised origins;
- the bytes returned for a range are exactly that range (``Content-Range``
  and length checked; multipart parts cover the request without overlap or
  conflict) or an error, never other data;
- memory is bounded by what was asked, whatever the headers claim;
- the checksum the index recorded travels as a precondition (``If-Match``
  with an S3 ETag, ``If-Unmodified-Since`` with a last-modified time), so a
  file changed after indexing fails instead of returning other bytes; values
  read from a repository are validated before they become headers;
- one :class:`~tessera_vz.core.options.RetryPolicy` bounds every request;
- every failure is :class:`SourceUnavailableError` or
  :class:`SourceChangedError` naming what was read and the URL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import unquote

import aiohttp
import numpy as np
import obstore
import obstore.store
from numpy.typing import NDArray
from obstore.exceptions import NotFoundError, PreconditionError

from tessera_vz.core import http as web
from tessera_vz.core import shutdown  # noqa: F401  (tokio exit hook: see the module)
from tessera_vz.core.byteranges import (
    MalformedRangesError,
    SizeMismatchError,
    locate,
    parse_content_range,
    range_header,
)
from tessera_vz.core.errors import (
    ConfigurationError,
    SourceChangedError,
    SourceNotFoundError,
    SourceUnavailableError,
)
from tessera_vz.core.options import RETRY_STATUS, ReadOptions, RetryPolicy
from tessera_vz.core.s3 import s3_settings, split_options
from tessera_vz.core.urls import SourceRoot, join, under

if TYPE_CHECKING:
    from obstore import GetOptions

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Merged ranges are cut into requests of about this size, fetched in
#: parallel: one stream over loopback or a mirror moves less than several.
PART = 8 << 20
#: Requests in flight per reader, like Icechunk's partial-value concurrency.
CONCURRENCY = 64
#: Bytes a multipart answer may spend per part on its delimiter and headers
#: (nginx spends ~100), beyond the ranges themselves.
PART_OVERHEAD = 512
#: The largest object fetched whole (a manifest of the whole archive is ~0.5 GB).
MAX_OBJECT = 4 << 30


def object_store(root: SourceRoot, *, options: dict[str, Any] | None = None) -> Any:
    """An obstore store rooted at a ``file://`` or ``s3://`` root (listings, reads).

    ``http(s)://`` roots are read by :mod:`~tessera_vz.core.http`, never by
    obstore, whose client follows redirects to any origin. Credentials and
    endpoints for S3 come from the environment the way obstore reads them
    (``AWS_*`` variables) plus explicit ``options``; they are never written
    anywhere by us.
    """
    opts = dict(options or {})
    retry = opts.pop("retry_config", None)
    client = opts.pop("client_options", {})
    if root.scheme == "file":
        return obstore.store.LocalStore(root.local_path)
    if root.scheme != "s3":
        raise ConfigurationError(f"no object store for {root.url}: expected file:// or s3://")
    # Our S3 keys (endpoint_url, anonymous, …) resolved with the AWS_* environment;
    # any other key is passed to obstore's S3 config as it is.
    s3, raw = split_options(opts)
    return s3_settings(s3).obstore(
        root.url,
        config=cast(Any, raw or None),
        client_options=client or None,
        retry_config=retry,
    )


# -- checksums: what the index records, and the preconditions that enforce them ----

_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
#: An entity tag as HTTP allows it (RFC 9110: visible ASCII, optionally weak).
_ETAG = re.compile(r'^(W/)?"?[\x21\x23-\x7e]{1,512}"?$')


def checksum_text(checksum: str | dt.datetime) -> str:
    """Printable form of a checksum, for the tiles table and reports."""
    if isinstance(checksum, dt.datetime):
        return checksum.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return checksum


def checksum_value(text: str) -> str | dt.datetime:
    """Inverse of :func:`checksum_text`; ``ValueError`` for a value no server could have sent.

    The text comes from a repository, an untrusted input: it becomes a
    request header, so control characters, line breaks and oversized values
    are refused here, never sent.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a checksum string, found {type(text).__name__}")
    if _DATE.match(text):
        try:
            return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            raise ValueError(f"checksum {text!r} is not a valid date") from None
    if not _ETAG.match(text):
        raise ValueError(
            f"checksum {text[:80]!r} is neither an ETag (visible ASCII, at most 512 "
            "characters) nor a UTC time YYYY-MM-DDTHH:MM:SSZ"
        )
    return text


@functools.lru_cache(maxsize=65536)
def http_precondition(checksum: str) -> dict[str, str]:
    """The request headers that enforce a recorded checksum (tiles-table text)."""
    value = checksum_value(checksum)
    if isinstance(value, dt.datetime):
        return {"If-Unmodified-Since": email.utils.format_datetime(value.astimezone(dt.UTC), True)}
    return {"If-Match": value if value.startswith(('"', "W/")) else f'"{value}"'}


@functools.lru_cache(maxsize=65536)
def precondition(checksum: str) -> dict[str, Any]:
    """The same precondition as obstore ``GetOptions``."""
    value = checksum_value(checksum)
    if isinstance(value, dt.datetime):
        return {"if_unmodified_since": value}
    return {"if_match": value}


@dataclass(frozen=True)
class ObjectFacts:
    """What an answer says about the object: its size and its validators."""

    size: int
    e_tag: str | None
    last_modified: dt.datetime | None

    def meta(self) -> dict[str, Any]:
        """As obstore's ``meta`` dicts spell it (``size``, ``e_tag``, ``last_modified``)."""
        return {"size": self.size, "e_tag": self.e_tag, "last_modified": self.last_modified}


def _valid_etag(value: Any) -> str | None:
    text = str(value) if value is not None else None
    return text if text is not None and _ETAG.match(text) else None


def _http_facts(headers: Any, size: int, url: str) -> ObjectFacts:
    """Size and validators of an HTTP answer; a malformed ``Last-Modified`` is an error."""
    modified = headers.get("Last-Modified")
    when = None
    if modified is not None:
        try:
            when = email.utils.parsedate_to_datetime(modified)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is None or when.tzinfo is None:
            raise web.AnswerError(
                f"Last-Modified {modified[:60]!r} is not an HTTP date; tessera-vz records it "
                "to detect files changed after indexing"
            )
    return ObjectFacts(size, _valid_etag(headers.get("ETag")), when)


def _object_facts(meta: dict[str, Any]) -> ObjectFacts:
    modified = meta.get("last_modified")
    return ObjectFacts(
        int(cast(int, meta["size"])),
        _valid_etag(meta.get("e_tag")),
        modified if isinstance(modified, dt.datetime) else None,
    )


# -- the reader -----------------------------------------------------------------------


class SourceFiles:
    """Checked, conditional reads of the authorised source files of an index.

    State is real here (one obstore store per root, which pool
    connections; roots that refused multi-range requests; the authorised
    roots), so a class. ``roots`` are the URL prefixes the caller
    authorised: a file under no such root is refused before any request, and
    a redirect is followed only to a URL under one.

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
        #: HTTP roots that answered a multi-range request with the whole file.
        self._single: set[str] = set()
        self._ca = self.options.trusted_ca()
        self._obstore_options = {**self.options.s3, **self.policy.obstore()}
        if self._ca is not None:  # S3 endpoints behind a private CA (obstore adds it to its roots)
            self._obstore_options["client_options"]["root_certificate"] = Path(self._ca).read_text()
        self._stores: dict[str, Any] = {}
        self._limits: dict[Any, asyncio.Semaphore] = {}
        self.allow(roots)

    # -- authorisation -------------------------------------------------------
    def allow(self, roots: Iterable[str]) -> None:
        """Authorise more roots (e.g. those of another zone's repository)."""
        self._roots |= {r if r.endswith("/") else r + "/" for r in roots}

    def root_of(self, url: str) -> str | None:
        """The longest authorised root holding ``url``, or ``None``."""
        best = None
        for root in self._roots:
            if url.startswith(root) and (best is None or len(root) > len(best)):
                best = root
        return best

    def allowed(self, url: str) -> bool:
        """Whether a redirect may lead to ``url`` (under an authorised root)."""
        return any(under(url, root) for root in self._roots)

    def _authorised(self, url: str, what: str) -> str:
        root = self.root_of(url)
        if root is None:
            raise ConfigurationError(
                f"{what}: {url} is not authorised (it lies under no source you trust); pass "
                "allow_local_sources=True (CLI: --allow-local-sources) for file:// sources you "
                "trust, or list its root in allowed_sources (CLI: --allow-source)"
            )
        return root

    def multi_range(self, url: str) -> bool:
        """Whether ``url`` is read with multi-range requests (HTTP roots that serve them)."""
        root = self.root_of(url)
        http = root is not None and root.startswith(("http:", "https:"))
        return http and root not in self._single

    # -- reads -----------------------------------------------------------------
    async def get(
        self, url: str, start: int, end: int, checksum: str | None, what: str,
        size: int | None = None,
    ) -> Any:  # fmt: skip
        """Bytes ``[start, end)`` of ``url``, if the file still matches ``checksum``.

        Returns a bytes-like buffer of exactly ``end - start`` bytes.
        ``size`` (as indexed) lets an answer naming another file size fail
        as changed. ``checksum=None`` sends no precondition (a header probe's
        first read).
        """
        root = self._authorised(url, what)
        if root.startswith(("http:", "https:")):
            return await self._http_ranges(url, [start], [end], checksum, what, size)
        return await self._attempts(
            url, what, lambda: self._object_get(root, url, start, end, checksum, what)
        )

    async def get_into(
        self, url: str, start: int, end: int, checksum: str | None, what: str,
        into: Sequence[memoryview], size: int | None = None,
    ) -> None:  # fmt: skip
        """Bytes ``[start, end)`` of ``url`` written into consecutive views ``into``.

        The views' lengths add up to ``end - start`` (a window's row spans,
        with throwaway views for the bytes between them). Over HTTP the bytes
        are copied there as they arrive; an attempt that fails part-way is
        repeated from the first byte, overwriting what it left.
        """
        root = self._authorised(url, what)
        if root.startswith(("http:", "https:")):
            await self._http_ranges(url, [start], [end], checksum, what, size, into=into)
            return
        _spill(await self.get(url, start, end, checksum, what, size), into)

    async def get_ranges(
        self,
        url: str,
        starts: Sequence[int],
        ends: Sequence[int],
        checksum: str | None,
        what: str,
        size: int | None = None,
    ) -> tuple[Any, NDArray[np.int64]]:
        """Bytes ``[start, end)`` of ``url`` for each range, in as few requests as it allows.

        Returns one buffer and where each range begins in it: a multi-range
        answer stays the one body the server sent, so a caller cuts hundreds
        of ranges out in one vectorised step. Ranges of an HTTP root that
        serves multi-range requests share one request; a server that ignores
        them (200 with the whole file, recognised before its body is read) is
        read range by range from then on, as are S3 and local files.
        """
        root = self._authorised(url, what)
        several = len(starts) > 1
        if root.startswith(("http:", "https:")) and (not several or root not in self._single):
            got = await self._http_ranges(url, starts, ends, checksum, what, size)
            if got is not None:
                return got if several else (got, np.zeros(1, np.int64))
            self._single.add(root)
            log.warning(
                "%s answers multi-range requests with whole files; reading its ranges one "
                "request each",
                root,
            )
        if not several:
            return await self.get(url, starts[0], ends[0], checksum, what, size), np.zeros(
                1, np.int64
            )
        blobs = await asyncio.gather(
            *(self.get(url, s, e, checksum, what, size) for s, e in zip(starts, ends, strict=True))
        )
        at = np.cumsum([0, *(e - s for s, e in zip(starts, ends, strict=True))])[:-1]
        return b"".join(blobs), at.astype(np.int64)

    async def probe(self, url: str, nbytes: int, what: str) -> tuple[bytes, ObjectFacts]:
        """The first ``nbytes`` of a file (fewer if it is shorter), its size and validators.

        One ranged GET: the answer's ``Content-Range`` carries the size and
        its headers the ETag and last-modified time, so no HEAD is needed.
        """
        root = self._authorised(url, what)
        if root.startswith(("http:", "https:")):
            return await self._attempts(url, what, lambda: self._http_probe(url, nbytes, what))
        return await self._attempts(url, what, lambda: self._object_probe(root, url, nbytes, what))

    async def head(self, url: str, what: str) -> ObjectFacts:
        """Size and validators of a file, without its bytes (``verify``)."""
        root = self._authorised(url, what)
        if root.startswith(("http:", "https:")):
            return await self._attempts(url, what, lambda: self._http_head(url, what))
        return await self._attempts(url, what, lambda: self._object_head(root, url, what))

    async def fetch(self, url: str, what: str, limit: int = MAX_OBJECT) -> bytes:
        """A whole (small) object such as a manifest, at most ``limit`` bytes."""
        root = self._authorised(url, what)
        if root.startswith(("http:", "https:")):
            return await self._attempts(url, what, lambda: self._http_fetch(url, limit, what))
        store, path = self._store(root), _path(root, url)

        async def once() -> bytes:
            got = await obstore.get_async(store, path)
            if int(got.meta["size"]) > limit:
                raise web.AnswerError(f"{got.meta['size']} bytes, over the {limit}-byte limit")
            return (await got.bytes_async()).to_bytes()

        return await self._attempts(url, what, once)

    # -- HTTP ------------------------------------------------------------------------
    def _answer(
        self, url: str, headers: Mapping[str, str], method: str = "GET"
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """One request under this reader's trust: redirects to authorised roots, its CA."""
        return web.answer(
            url, headers, allowed=self.allowed, ca_file=self._ca,
            connect_timeout=self.policy.connect, method=method,
        )  # fmt: skip

    async def _http_ranges(
        self,
        url: str,
        starts: Sequence[int],
        ends: Sequence[int],
        checksum: str | None,
        what: str,
        size: int | None,
        *,
        into: Sequence[memoryview] | None = None,
    ) -> Any:
        """One ranged request (retried); ``None`` if a multi-range request got the whole file.

        For one range the result is its bytes (``None`` once they landed in
        ``into``), for several ``(body, where each range begins)``.
        """
        headers = {"Range": range_header(starts, ends)}
        if checksum is not None:
            headers.update(self._header_precondition(checksum, url, what))
        n = len(starts)
        wanted = sum(e - s for s, e in zip(starts, ends, strict=True))

        async def once() -> Any:
            async with self._answer(url, headers) as resp:
                _status(resp.status, resp.reason, url, checksum, what)
                if resp.status == 200:
                    if n > 1:
                        return None  # never read a whole tile for a few ranges
                    raise web.AnswerError(
                        "the server ignores Range requests (answered 200 with the whole file); "
                        "tessera-vz reads only the bytes it needs"
                    )
                crange = resp.headers.get("Content-Range")
                if n == 1:
                    _check_single(crange, starts[0], ends[0], size, url, what)
                    buf = await web.read_exact(resp, wanted, into)
                    return None if into is not None else buf
                # A server may merge nearby ranges into one part (RFC 9110), so the
                # answer may hold the whole span the ranges touch, never more.
                span = max(ends) - min(starts)
                body = await web.read_capped(resp, span + (n + 1) * PART_OVERHEAD)
                ctype = resp.headers.get("Content-Type", "")
                try:
                    return body, locate(body, ctype, crange, starts, ends, size)
                except SizeMismatchError as exc:
                    raise SourceChangedError(
                        f"{what}: {url}: {exc}. Re-run `tessera-vz index --reprobe` for this source"
                    ) from None
                except MalformedRangesError as exc:
                    raise web.AnswerError(str(exc)) from None

        got = await self._attempts(url, what, once)
        if n > 1 and got is None:
            return None
        return got

    async def _http_probe(self, url: str, nbytes: int, what: str) -> tuple[bytes, ObjectFacts]:
        headers = {"Range": f"bytes=0-{nbytes - 1}"}
        async with self._answer(url, headers) as resp:
            _status(resp.status, resp.reason, url, None, what)
            if resp.status == 206:
                crange = resp.headers.get("Content-Range")
                parsed = parse_content_range(crange)
                total = parsed[2] if parsed is not None else None
                if total is None:
                    raise web.AnswerError(f"a 206 answer with Content-Range {crange!r}")
                _check_single(crange, 0, min(nbytes, total), total, url)
                got = await web.read_exact(resp, min(nbytes, total))
                return bytes(cast(bytearray, got)), _http_facts(resp.headers, total, url)
            length = web.declared_length(resp)
            if length is None:
                raise web.AnswerError("a 200 answer without Content-Length to a ranged request")
            prefix = await web.read_prefix(resp, nbytes)
            resp.close()  # the rest of the file is never read
            if len(prefix) < min(nbytes, length):
                raise web.AnswerError("the answer was cut short", transient=True)
            return prefix, _http_facts(resp.headers, length, url)

    async def _http_head(self, url: str, what: str) -> ObjectFacts:
        async with self._answer(url, {}, "HEAD") as resp:
            _status(resp.status, resp.reason, url, None, what)
            length = web.declared_length(resp)
            if length is None:
                raise web.AnswerError("a HEAD answer without Content-Length")
            return _http_facts(resp.headers, length, url)

    async def _http_fetch(self, url: str, limit: int, what: str) -> bytes:
        async with self._answer(url, {}) as resp:
            _status(resp.status, resp.reason, url, None, what)
            if resp.status != 200:
                raise web.AnswerError(f"HTTP {resp.status} to a plain GET")
            return bytes(await web.read_capped(resp, limit))

    def _header_precondition(self, checksum: str, url: str, what: str) -> dict[str, str]:
        try:
            return http_precondition(checksum)
        except ValueError as exc:
            raise _refused_checksum(url, what, exc) from None

    # -- obstore (S3, local files) ---------------------------------------------------
    def _store(self, root: str) -> Any:
        if root not in self._stores:
            opts = dict(self._obstore_options)
            if root.startswith("file:"):
                opts = {}
                if not Path(SourceRoot(root).local_path).is_dir():
                    raise _gone(root, "the local tree")
            self._stores[root] = object_store(SourceRoot(root), options=opts)
        return self._stores[root]

    async def _object_get(
        self, root: str, url: str, start: int, end: int, checksum: str | None, what: str
    ) -> Any:
        opts: dict[str, Any] = {"range": (start, end)}
        if checksum is not None:
            try:
                opts.update(precondition(checksum))
            except ValueError as exc:
                raise _refused_checksum(url, what, exc) from None
        try:
            got = await obstore.get_async(self._store(root), _path(root, url),
                                          options=cast("GetOptions", opts))  # fmt: skip
            data = await got.bytes_async()
        except PreconditionError:
            raise _changed(url, checksum, what) from None
        except (NotFoundError, FileNotFoundError):
            raise _gone(url, what) from None
        if len(data) != end - start:
            raise web.AnswerError(
                f"{len(data)} bytes for the {end - start} bytes at {start}; the file is "
                "shorter than indexed or the transfer was cut",
                transient=True,
            )
        return data

    async def _object_probe(
        self, root: str, url: str, nbytes: int, what: str
    ) -> tuple[bytes, ObjectFacts]:
        try:
            got = await obstore.get_async(self._store(root), _path(root, url),
                                          options={"range": (0, nbytes)})  # fmt: skip
            prefix = (await got.bytes_async()).to_bytes()
        except (NotFoundError, FileNotFoundError):
            raise _gone(url, what) from None
        meta = dict(got.meta)
        return prefix, _object_facts(meta)

    async def _object_head(self, root: str, url: str, what: str) -> ObjectFacts:
        try:
            meta = dict(await obstore.head_async(self._store(root), _path(root, url)))
        except (NotFoundError, FileNotFoundError):
            raise _gone(url, what) from None
        return _object_facts(meta)

    # -- attempts ----------------------------------------------------------------------
    def _limit(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        return self._limits.setdefault(loop, asyncio.Semaphore(CONCURRENCY))

    async def _attempts(self, url: str, what: str, once: Callable[[], Awaitable[T]]) -> T:
        """Run ``once`` under the retry policy; every failure becomes one of our errors."""
        reason, tries, again = "", 0, False
        for delay in self.policy.delays():
            if delay:
                await asyncio.sleep(delay)
            tries += 1
            try:
                async with self._limit(), asyncio.timeout(self.policy.timeout):
                    return await once()
            except _RetryError as exc:
                reason, again = str(exc), True
            except (SourceChangedError, SourceUnavailableError, ConfigurationError):
                raise
            except MemoryError:
                reason, again = "the answer did not fit in memory", False
                break
            except Exception as exc:  # any client's failure, classified once
                reason, again = web.classify(exc)
                if not again:
                    break
        attempts = f" (after {tries} attempts)" if tries > 1 else ""
        error = SourceUnavailableError(
            f"{what + ': ' if what else ''}{url}: {reason}{attempts}. Retry later, or run "
            "`tessera-vz verify` to check the sources"
        )
        error.transient = again  # a later try may succeed (503, reset, timeout)
        raise error


class _RetryError(SourceUnavailableError):
    """An answer worth another attempt (503 and the like)."""


def _status(status: int, reason: str | None, url: str, checksum: str | None, what: str) -> None:
    """Turn an answer's status into our errors; 200 and 206 pass."""
    if status in (200, 206):
        return
    if status == 412:
        raise _changed(url, checksum, what)
    if status == 416:
        raise SourceChangedError(
            f"{what + ': ' if what else ''}{url} is shorter than when it was indexed (416 "
            "Range Not Satisfiable); re-run `tessera-vz index --reprobe` for this source"
        )
    if status in (404, 410):
        raise _gone(url, what)
    text = f"HTTP {status} {reason or ''}".strip()
    if status in RETRY_STATUS:
        raise _RetryError(text)
    raise web.AnswerError(text)


def _check_single(
    crange: str | None, start: int, end: int, size: int | None, url: str = "", what: str = ""
) -> None:
    """A 206 for one range must name exactly that range (and the indexed size, if known)."""
    parsed = parse_content_range(crange)
    if parsed is None or (parsed[0], parsed[1] + 1) != (start, end):
        raise web.AnswerError(
            f"asked for bytes {start}-{end - 1}, the answer holds "
            f"{crange[:80] if crange else 'no Content-Range'}"
        )
    total = parsed[2]
    if size is not None and total is not None and total != size:
        raise SourceChangedError(
            f"{what + ': ' if what else ''}{url}: the server says the file holds {total} "
            f"bytes; it held {size} when indexed. Re-run `tessera-vz index --reprobe` for this "
            "source"
        )


def _spill(data: Any, into: Sequence[memoryview]) -> None:
    """Copy a range's bytes into consecutive views."""
    got, at = memoryview(data).cast("B"), 0
    for dest in into:
        dest[:] = got[at : at + len(dest)]
        at += len(dest)


def _path(root: str, url: str) -> str:
    """The object path of ``url`` below ``root`` (decoded: obstore encodes it again)."""
    return unquote(url[len(root) :])


def _changed(url: str, checksum: str | None, what: str) -> SourceChangedError:
    return SourceChangedError(
        f"{what + ': ' if what else ''}{url} no longer matches the checksum recorded when it "
        f"was indexed ({checksum}). The source file changed after it was indexed; re-run "
        "`tessera-vz index --reprobe` for this source to index its new bytes"
    )


def _refused_checksum(url: str, what: str, exc: ValueError) -> SourceUnavailableError:
    """A checksum from the repository that must not become a request header."""
    return SourceUnavailableError(
        f"{what}: {url}: the index records {exc}; the repository is damaged or was "
        "crafted, so this file is not read. Re-index it with `tessera-vz index`"
    )


def _gone(url: str, what: str) -> SourceNotFoundError:
    return SourceNotFoundError(
        f"{what + ': ' if what else ''}{url} is gone (not found); run `tessera-vz verify` to "
        "list missing tiles and `tessera-vz index` to drop them"
    )


__all__ = [
    "CONCURRENCY",
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
