"""The boundary's backend for ``http(s)://`` roots: ranged requests through aiohttp.

Requests go through :func:`tessera_vz.core.http.answer`, which follows
redirects only to authorised origins and refuses encoded answers; this
module decides what each answer may be for the read that asked (status,
``Content-Range``, length, multipart parts) before any of its bytes are
used. One attempt per call: retries, limits and error messages are the
boundary's (:class:`~tessera_vz.core.boundary.SourceFiles`).
"""

from __future__ import annotations

import email.utils
from collections.abc import Buffer, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager

import aiohttp

from tessera_vz.core import http
from tessera_vz.core.byteranges import (
    MalformedRangesError,
    SizeMismatchError,
    locate,
    parse_content_range,
    range_header,
)
from tessera_vz.core.checksums import http_precondition, valid_etag
from tessera_vz.core.errors import AnswerError
from tessera_vz.core.options import RETRY_STATUS
from tessera_vz.core.transport import (
    FileChangedError,
    FileGoneError,
    IndexedFile,
    ObjectFacts,
    Ranges,
    changed,
)

#: Bytes a multipart answer may spend per part on its delimiter and headers
#: (nginx spends ~100), beyond the ranges themselves.
PART_OVERHEAD = 512

_REINDEX = "Re-run `tessera-vz index --reprobe` for this source"


class HttpTransport:
    """Reads of the files below one ``http(s)://`` root.

    The boundary's :class:`~tessera_vz.core.transport.Transport` for them;
    state is real (whether the root serves multi-range requests, which the
    boundary learns), hence a class.

    Parameters
    ----------
    allowed
        Whether a redirect may lead to a URL (the boundary's authorised roots).
    ca_file
        Extra certificate authorities to trust, or ``None``.
    connect_timeout
        Seconds allowed to open a connection.
    private_ok
        The user allowed this root to be on a loopback or private address;
        otherwise no request of it connects to one.
    """

    def __init__(
        self, allowed: Callable[[str], bool], ca_file: str | None, connect_timeout: float,
        private_ok: bool = False,
    ) -> None:  # fmt: skip
        self.multi_range = True
        self._allowed = allowed
        self._ca = ca_file
        self._connect = connect_timeout
        self._private_ok = private_ok

    def _answer(
        self, url: str, headers: Mapping[str, str], method: str = "GET"
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """One request under the boundary's trust: redirects to authorised roots, its CA."""
        return http.answer(
            url, headers, allowed=self._allowed, ca_file=self._ca,
            connect_timeout=self._connect, method=method, private_ok=self._private_ok,
        )  # fmt: skip

    async def read(self, file: IndexedFile, start: int, end: int) -> Buffer:
        got = await self._single(file, start, end, None)
        assert got is not None  # only a read into views returns nothing
        return got

    async def read_into(
        self, file: IndexedFile, start: int, end: int, into: Sequence[memoryview]
    ) -> None:
        await self._single(file, start, end, into)

    async def _single(
        self, file: IndexedFile, start: int, end: int, into: Sequence[memoryview] | None
    ) -> bytearray | None:
        """One ranged request; its bytes, or ``None`` once they landed in ``into``."""
        async with self._answer(file.url, _headers([start], [end], file.checksum)) as resp:
            _status(resp, file.checksum)
            if resp.status == 200:
                raise AnswerError(
                    "the server ignores Range requests (answered 200 with the whole file); "
                    "tessera-vz reads only the bytes it needs"
                )
            _check_single(resp.headers.get("Content-Range"), start, end, file.size)
            return await http.read_exact(resp, end - start, into)

    async def read_ranges(
        self, file: IndexedFile, starts: Sequence[int], ends: Sequence[int]
    ) -> Ranges | None:
        """One multi-range request; ``None`` if the server answered with the whole file."""
        n = len(starts)
        async with self._answer(file.url, _headers(starts, ends, file.checksum)) as resp:
            _status(resp, file.checksum)
            if resp.status == 200:
                return None  # never read a whole tile for a few ranges
            # A server may merge nearby ranges into one part (RFC 9110), so the
            # answer may hold the whole span the ranges touch, never more.
            span = max(ends) - min(starts)
            body = await http.read_capped(resp, span + (n + 1) * PART_OVERHEAD)
            ctype = resp.headers.get("Content-Type", "")
            crange = resp.headers.get("Content-Range")
            try:
                return body, locate(body, ctype, crange, starts, ends, file.size)
            except SizeMismatchError as exc:
                raise FileChangedError(f": {exc}. {_REINDEX}") from None
            except MalformedRangesError as exc:
                raise AnswerError(str(exc)) from None

    async def probe(self, url: str, nbytes: int) -> tuple[bytes, ObjectFacts]:
        async with self._answer(url, {"Range": f"bytes=0-{nbytes - 1}"}) as resp:
            _status(resp, None)
            if resp.status == 206:
                crange = resp.headers.get("Content-Range")
                parsed = parse_content_range(crange)
                total = parsed[2] if parsed is not None else None
                if total is None:
                    raise AnswerError(f"a 206 answer with Content-Range {crange!r}")
                _check_single(crange, 0, min(nbytes, total), total)
                got = await http.read_exact(resp, min(nbytes, total))
                return bytes(got or b""), _facts(resp.headers, total)
            length = http.declared_length(resp)
            if length is None:
                raise AnswerError("a 200 answer without Content-Length to a ranged request")
            prefix = await http.read_prefix(resp, nbytes)
            resp.close()  # the rest of the file is never read
            if len(prefix) < min(nbytes, length):
                raise AnswerError("the answer was cut short", transient=True)
            return prefix, _facts(resp.headers, length)

    async def head(self, url: str) -> ObjectFacts:
        async with self._answer(url, {}, "HEAD") as resp:
            _status(resp, None)
            length = http.declared_length(resp)
            if length is None:
                raise AnswerError("a HEAD answer without Content-Length")
            return _facts(resp.headers, length)

    async def fetch(self, url: str, limit: int) -> bytes:
        async with self._answer(url, {}) as resp:
            _status(resp, None)
            if resp.status != 200:
                raise AnswerError(f"HTTP {resp.status} to a plain GET")
            return bytes(await http.read_capped(resp, limit))


def _headers(starts: Sequence[int], ends: Sequence[int], checksum: str | None) -> dict[str, str]:
    """``Range`` and, with a recorded checksum, the precondition that enforces it."""
    headers = {"Range": range_header(starts, ends)}
    if checksum is not None:
        headers.update(http_precondition(checksum))
    return headers


def _status(resp: aiohttp.ClientResponse, checksum: str | None) -> None:
    """Turn an answer's status into the transport's signals; 200 and 206 pass."""
    status = resp.status
    if status in (200, 206):
        return
    if status == 412:
        raise changed(checksum)
    if status == 416:
        raise FileChangedError(
            " is shorter than when it was indexed (416 Range Not Satisfiable); re-run "
            "`tessera-vz index --reprobe` for this source"
        )
    if status in (404, 410):
        raise FileGoneError(f"HTTP {status}")
    text = f"HTTP {status} {resp.reason or ''}".strip()
    raise AnswerError(text, transient=status in RETRY_STATUS)


def _check_single(crange: str | None, start: int, end: int, size: int | None) -> None:
    """A 206 for one range must name exactly that range (and the indexed size, if known)."""
    parsed = parse_content_range(crange)
    if parsed is None or (parsed[0], parsed[1] + 1) != (start, end):
        raise AnswerError(
            f"asked for bytes {start}-{end - 1}, the answer holds "
            f"{crange[:80] if crange else 'no Content-Range'}"
        )
    total = parsed[2]
    if size is not None and total is not None and total != size:
        raise FileChangedError(
            f": the server says the file holds {total} bytes; it held {size} when indexed. "
            f"{_REINDEX}"
        )


def _facts(headers: Mapping[str, str], size: int) -> ObjectFacts:
    """Size and validators of an HTTP answer; a malformed ``Last-Modified`` is an error."""
    modified = headers.get("Last-Modified")
    when = None
    if modified is not None:
        try:
            when = email.utils.parsedate_to_datetime(modified)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is None or when.tzinfo is None:
            raise AnswerError(
                f"Last-Modified {modified[:60]!r} is not an HTTP date; tessera-vz records it "
                "to detect files changed after indexing"
            )
    return ObjectFacts(size, valid_etag(headers.get("ETag")), when)


__all__ = ["PART_OVERHEAD", "HttpTransport"]
