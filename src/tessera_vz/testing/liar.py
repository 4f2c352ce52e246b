"""An HTTP/1.1 server that serves files honestly except for one chosen lie.

The reader's HTTP boundary promises that the bytes it returns are exactly
the range asked, or an error: never a part twice, never another range's
bytes, never an unbounded body, never a redirect to an origin nobody
authorised. nginx cannot be made to break those rules, and a mocked client
would only test our own idea of how servers break them. This server breaks
them on the wire, one way at a time, so the real clients (aiohttp, obstore,
icechunk) meet the real bytes a broken CDN or a hostile mirror would send.

It serves the files under a root directory like a static web server: ``GET``
and ``HEAD``; a single range answered ``206`` with ``Content-Range``; several
ranges ``206 multipart/byteranges`` (parts in the order asked, as nginx
does); ``200`` with the whole file when no (valid) range is asked; ``404``;
``416`` with ``Content-Range: bytes */size``; ``If-Match`` (quoted ETags,
compared strongly, or ``*``) and ``If-Unmodified-Since`` answered ``412``
when they fail (``If-Match`` wins when both are sent); ``ETag`` (nginx's
``"<mtime hex>-<size hex>"``) and ``Last-Modified`` on every file answer;
keep-alive. ``Accept-Encoding`` and ``If-Range`` are ignored (identity,
always). Paths are percent-decoded and must stay under the root. Requests
under ``/_moved/`` are always answered honestly for the file at the rest of
the path: the target of ``redirect_same_origin``.

The misbehaviour is the :class:`Scenario`, switchable while the server runs
(:meth:`LiarServer.set_scenario`), with its knobs in :class:`Options`. A
scenario applies to every request matching ``Options.path`` /
``Options.first``; where a scenario cannot apply (a multipart lie on a
single-range request, a body lie on a ``HEAD``), the answer is honest.

=========================  ===================================================
Scenario                   What goes on the wire
=========================  ===================================================
``honest``                 Everything as above.
``duplicate_part``         Multi-range: the first asked part is sent twice,
                           first with the right bytes, then (right after it)
                           with the same ``Content-Range`` and other bytes.
``overlapping_parts``      Multi-range: the second part's ``Content-Range``
                           starts a few bytes inside the first part, and the
                           shared bytes disagree with the first part's.
``extra_part``             Multi-range: a part for a range nobody asked
                           (16 bytes after the last asked range, or before
                           the first) is inserted after the first part.
``missing_part``           Multi-range: the last asked part is left out.
``merged_parts``           Multi-range (legitimate, RFC 9110 §14.2): asked
                           ranges, sorted, are merged pairwise into one part
                           spanning both (and the gap); two ranges become a
                           plain single-part ``206`` with ``Content-Range``.
``reordered_parts``        Multi-range (legitimate): parts in reverse order.
``huge_content_length``    ``Content-Length: 4294967296`` on the answer, then
                           the right bytes, then the connection closes (or
                           stays open: ``Options.keep_open``).
``wrong_content_range``    Each part carries the bytes *and* the
                           ``Content-Range`` of another range of the same
                           length (the next one, or the previous at the end).
``long_body``              ``Content-Range`` right, but 16 more bytes follow
                           each part's data (``Content-Length`` counts them).
``short_body``             ``Content-Length`` right, half the body, then FIN.
``no_content_length_close`` No ``Content-Length``, no chunking:
                           ``Connection: close`` delimits the body.
``chunked``                Honest bytes, ``Transfer-Encoding: chunked``
                           (legitimate), in chunks of varying size.
``chunked_endless``        Chunked: the right bytes, then chunks of zeros
                           that never end (``Options.piece`` bytes every
                           ``Options.interval`` s) until the client leaves.
``gzip``                   ``Content-Encoding: gzip`` of the answer's body
                           whatever ``Accept-Encoding`` said.
``gzip_lying``             ``Content-Encoding: gzip``, body not gzip.
``trickle``                The right bytes, ``Options.piece`` bytes every
                           ``Options.interval`` s (``Content-Length`` right).
``stall_headers``          Reads the request, never answers.
``redirect_other_origin``  ``Options.redirect_status`` (302; 301/307/308) to
                           ``Options.redirect_to`` + the same path.
``redirect_same_origin``   302 to ``/_moved/<path>`` on this server, which
                           serves the right bytes.
``redirect_loop``          302 to the very URL asked.
``full_200``               Ignores ``Range``: ``200`` with the whole file.
``full_200_huge``          Ignores ``Range``: ``200`` claiming
                           ``Content-Length: 4294967296``, the whole file,
                           then close (or ``Options.keep_open``).
``ignore_preconditions``   Never ``412``: ``If-Match`` and
                           ``If-Unmodified-Since`` are ignored.
``header_flood``           ~``Options.flood_bytes`` (1 MiB) of ``X-Flood-N``
                           headers before an honest answer.
``bad_status_line``        ``HTTP/1.1 OK 206`` as status line, rest honest.
``http09``                 The body alone, no status line or headers, close.
``bad_validators``         ``ETag``/``Last-Modified`` per
                           ``Options.validators``: ``control`` (``\\x01`` and
                           ``\\x7f`` inside both), ``long`` (8 KiB ETag),
                           ``unquoted``, ``weak`` (``W/"…"``), ``bad_date``
                           (unparseable ``Last-Modified``). ``If-Match`` is
                           compared with the hostile ETag as sent.
``wrong_total``            ``Content-Range: bytes a-b/<size + 1000>``.
``status_500``             ``500`` with a short text body.
``status_503``             ``503`` with ``Retry-After: 0``.
``status_416``             ``416`` with ``Content-Range: bytes */size`` for
                           any request of an existing file.
``reset_mid_body``         ``Content-Length`` right, half the body, TCP RST.
=========================  ===================================================

Every request is recorded (:class:`LiarRequest`: method, the target exactly
as sent, all headers in order, scenario applied, status sent, bytes sent),
and the record is updated as the answer goes out, so a test can read it
even while a ``stall_headers`` or ``trickle`` answer is in progress.
"""

from __future__ import annotations

import contextlib
import email.utils
import enum
import gzip
import http.server
import logging
import select
import socket
import socketserver
import ssl
import struct
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import unquote, urlsplit

from tessera_vz.testing.service import Service, serve_in_thread, stop_server

if TYPE_CHECKING:
    from tessera_vz.testing.tls import TestCA

logger = logging.getLogger(__name__)

#: What the ``huge`` scenarios claim: 4 GiB, past any 32-bit length.
HUGE_LENGTH = 4 << 30
#: Prefix under which the server always serves honestly (``redirect_same_origin``'s target).
MOVED_PREFIX = "/_moved"
#: Bytes ``long_body`` appends and ``extra_part`` invents.
EXTRA_BYTES = 16
BOUNDARY = "liar0boundary0c0ffee"
VALIDATOR_VARIANTS = ("control", "long", "unquoted", "weak", "bad_date")
REDIRECT_STATUSES = (301, 302, 307, 308)


class Scenario(enum.StrEnum):
    """The one misbehaviour of :class:`LiarServer` (see the module docstring's table)."""

    HONEST = "honest"
    DUPLICATE_PART = "duplicate_part"
    OVERLAPPING_PARTS = "overlapping_parts"
    EXTRA_PART = "extra_part"
    MISSING_PART = "missing_part"
    MERGED_PARTS = "merged_parts"
    REORDERED_PARTS = "reordered_parts"
    HUGE_CONTENT_LENGTH = "huge_content_length"
    WRONG_CONTENT_RANGE = "wrong_content_range"
    LONG_BODY = "long_body"
    SHORT_BODY = "short_body"
    NO_CONTENT_LENGTH_CLOSE = "no_content_length_close"
    CHUNKED = "chunked"
    CHUNKED_ENDLESS = "chunked_endless"
    GZIP = "gzip"
    GZIP_LYING = "gzip_lying"
    TRICKLE = "trickle"
    STALL_HEADERS = "stall_headers"
    REDIRECT_OTHER_ORIGIN = "redirect_other_origin"
    REDIRECT_SAME_ORIGIN = "redirect_same_origin"
    REDIRECT_LOOP = "redirect_loop"
    FULL_200 = "full_200"
    FULL_200_HUGE = "full_200_huge"
    IGNORE_PRECONDITIONS = "ignore_preconditions"
    HEADER_FLOOD = "header_flood"
    BAD_STATUS_LINE = "bad_status_line"
    HTTP09 = "http09"
    BAD_VALIDATORS = "bad_validators"
    WRONG_TOTAL = "wrong_total"
    STATUS_500 = "status_500"
    STATUS_503 = "status_503"
    STATUS_416 = "status_416"
    RESET_MID_BODY = "reset_mid_body"


#: Scenarios that only change multi-range answers.
MULTIPART_SCENARIOS = frozenset(
    {
        Scenario.DUPLICATE_PART,
        Scenario.OVERLAPPING_PARTS,
        Scenario.EXTRA_PART,
        Scenario.MISSING_PART,
        Scenario.MERGED_PARTS,
        Scenario.REORDERED_PARTS,
    }
)


@dataclass(frozen=True)
class Options:
    """Knobs of the scenarios; each is read only by the scenarios it names.

    Parameters
    ----------
    path
        Misbehave only on requests whose target contains this substring
        (default: all); the others are answered honestly.
    first
        Misbehave only on the first ``first`` matching requests (a
        transient fault), honestly afterwards.
    redirect_to
        ``redirect_other_origin``: base URL (``scheme://host:port/``) the
        request's path is appended to.
    redirect_status
        Status of ``redirect_*`` answers: 301, 302, 307 or 308.
    keep_open
        ``huge_content_length``, ``full_200_huge``: after the (short) body,
        hold the connection open instead of closing it.
    interval, piece
        ``trickle`` and ``chunked_endless``: ``piece`` bytes every
        ``interval`` seconds. Defaults suit ``trickle``: a 128-byte read
        takes 32 s.
    validators
        ``bad_validators``: one of :data:`VALIDATOR_VARIANTS`.
    flood_bytes
        ``header_flood``: total size of the extra headers.
    """

    path: str | None = None
    first: int | None = None
    redirect_to: str | None = None
    redirect_status: int = 302
    keep_open: bool = False
    interval: float = 0.25
    piece: int = 1
    validators: str = "control"
    flood_bytes: int = 1 << 20

    def check(self, scenario: Scenario) -> None:
        """ValueError if the options cannot drive ``scenario``."""
        if self.redirect_status not in REDIRECT_STATUSES:
            raise ValueError(
                f"redirect_status must be one of {REDIRECT_STATUSES}, got {self.redirect_status}"
            )
        if self.validators not in VALIDATOR_VARIANTS:
            raise ValueError(
                f"validators must be one of {VALIDATOR_VARIANTS}, got {self.validators!r}"
            )
        if self.piece < 1 or self.interval < 0:
            raise ValueError(
                f"piece must be >= 1 and interval >= 0, got {self.piece}, {self.interval}"
            )
        if scenario is Scenario.REDIRECT_OTHER_ORIGIN:
            parts = urlsplit(self.redirect_to or "")
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    "redirect_other_origin needs redirect_to=<http(s)://host:port/>, "
                    f"got {self.redirect_to!r}"
                )


@dataclass
class LiarRequest:
    """One request and what was answered (updated while the answer goes out).

    Attributes
    ----------
    method, target, version
        The request line as sent (``target`` is not normalised or decoded).
    connection
        Serial number of the connection the request came on (1, 2, …):
        requests sharing one were kept alive.
    headers
        All request headers, in order, names as sent.
    scenario
        The scenario applied to this request (``honest`` when it did not match).
    status
        Status code sent; 0 when none was (``stall_headers``, ``http09``,
        ``bad_status_line``, or not yet).
    bytes_sent
        Bytes written on the connection for this answer, head included
        (TLS framing excluded).
    done
        False while the answer is still being written (or stalled).
    """

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    scenario: Scenario
    connection: int
    time: float
    status: int = 0
    bytes_sent: int = 0
    done: bool = False

    def header(self, name: str) -> str | None:
        """The first value of request header ``name`` (case-insensitive), or None."""
        low = name.lower()
        for k, v in self.headers:
            if k.lower() == low:
                return v
        return None


@dataclass(frozen=True)
class _Part:
    """One body part: what ``Content-Range`` claims and the bytes sent."""

    start: int
    end: int  # inclusive
    total: int
    data: bytes


@dataclass
class _File:
    path: Path
    size: int
    mtime: float
    etag: str
    last_modified: str

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``start..end`` inclusive (clipped to the file)."""
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(max(0, end - start + 1))


class _HangupError(Exception):
    """The answer ended the connection (close, RST or client gone)."""


def _flip(data: bytes) -> bytes:
    """The same length of other bytes."""
    return bytes(b ^ 0xFF for b in data)


def _parse_ranges(value: str | None, size: int) -> list[tuple[int, int]] | None:
    """``Range`` as inclusive (start, end) pairs clipped to ``size``.

    None when there is no usable ``Range`` (absent, not ``bytes=``, bad
    syntax: RFC 9110 says to ignore it and answer 200); ``[]`` when every
    range is unsatisfiable (416).
    """
    if value is None:
        return None
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or not spec.strip():
        return None
    out: list[tuple[int, int]] = []
    for item in spec.split(","):
        first, dash, last = item.strip().partition("-")
        if not dash:
            return None
        try:
            if first == "":
                n = int(last)
                if n < 0:
                    return None
                if n > 0 and size > 0:
                    out.append((max(0, size - n), size - 1))
                continue
            start = int(first)
            end = int(last) if last != "" else size - 1
        except ValueError:
            return None
        if start < 0 or end < start:
            return None
        if start < size:
            out.append((start, min(end, size - 1)))
    return out


def _http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Clients open dozens of connections at once; a backlog of 5 drops SYNs.
    request_queue_size = 256
    liar: LiarServer


class _Handler(http.server.BaseHTTPRequestHandler):
    """One client connection: parse requests (the stdlib's job), answer them raw."""

    server: _Server
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections last as long as nginx's; stop() unblocks them.
    timeout = 65

    _rec: LiarRequest
    _broken = False

    def setup(self) -> None:
        liar = self.server.liar
        self._conn_id = liar._next_connection()
        if liar._ssl is not None:
            # Handshake here, in the connection's thread: a client that never
            # finishes one (or rejects our certificate) must not block the
            # accept loop, nor print a traceback.
            raw = self.request
            liar._track(raw, add=True)
            try:
                raw.settimeout(10)
                self.request = liar._ssl.wrap_socket(raw, server_side=True)
            except (OSError, ValueError) as e:
                logger.debug("liar: TLS handshake failed: %s", e)
                self._broken = True
            liar._track(raw, add=False)
        liar._track(self.request, add=True)
        super().setup()

    def handle(self) -> None:
        if self._broken:
            return
        with contextlib.suppress(OSError, ValueError, _HangupError):
            super().handle()

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().finish()
        self.server.liar._track(self.request, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("liar %s: " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    # -- the answer ------------------------------------------------------

    def _serve(self, *, head: bool) -> None:
        liar = self.server.liar
        words = self.requestline.split()
        target = words[1] if len(words) > 1 else self.path
        scenario, opts = liar._decide(target)
        rec = LiarRequest(
            method=self.command,
            target=target,
            version=self.request_version,
            headers=tuple(self.headers.items()),
            scenario=scenario,
            connection=self._conn_id,
            time=time.time(),
        )
        liar._record(rec)
        self._rec = rec
        try:
            self._answer(target, scenario, opts, head=head)
        finally:
            rec.done = True

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError as e:
            self.close_connection = True
            raise _HangupError from e
        self._rec.bytes_sent += len(data)

    def _head(
        self,
        status: int,
        headers: list[tuple[str, str]],
        *,
        reason: str | None = None,
        status_line: str | None = None,
    ) -> None:
        reason = reason if reason is not None else http.HTTPStatus(status).phrase
        line = status_line or f"HTTP/1.1 {status} {reason}"
        if status_line is None:
            self._rec.status = status
        base = [("Date", _http_date(time.time())), ("Server", "liar")]
        if self.close_connection and not any(k.lower() == "connection" for k, _ in headers):
            base.append(("Connection", "close"))
        lines = [line] + [f"{k}: {v}" for k, v in base + headers]
        self._write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _simple(
        self, status: int, headers: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> None:
        """A complete small answer with ``Content-Length``."""
        hs = [*(headers or []), ("Content-Length", str(len(body)))]
        if body:
            hs.insert(0, ("Content-Type", "text/plain"))
        self._head(status, hs)
        if self.command != "HEAD":
            self._write(body)

    def _resolve(self, target: str) -> _File | None:
        """The regular file a target names under the root, or None."""
        root = self.server.liar.root
        path = unquote(urlsplit(target).path)
        if path.startswith(MOVED_PREFIX + "/"):
            path = path[len(MOVED_PREFIX) :]
        try:
            full = (root / path.lstrip("/")).resolve()
        except (OSError, ValueError):
            return None
        if not full.is_relative_to(root) or not full.is_file():
            return None
        st = full.stat()
        return _File(
            path=full,
            size=st.st_size,
            mtime=st.st_mtime,
            etag=f'"{int(st.st_mtime):x}-{st.st_size:x}"',
            last_modified=_http_date(st.st_mtime),
        )

    def _precondition_failed(self, f: _File) -> bool:
        """RFC 9110 §13.2.2: ``If-Match`` first; ``If-Unmodified-Since`` only without it."""
        if_match = self.headers.get("If-Match")
        if if_match is not None:
            tags = [t.strip() for t in if_match.split(",")]
            # Strong comparison: a weak tag never matches.
            return not ("*" in tags or (not f.etag.startswith("W/") and f.etag in tags))
        ius = self.headers.get("If-Unmodified-Since")
        if ius is not None:
            try:
                when = email.utils.parsedate_to_datetime(ius)
            except (TypeError, ValueError):
                return False
            return int(f.mtime) > when.timestamp()
        return False

    def _answer(self, target: str, scenario: Scenario, opts: Options, *, head: bool) -> None:
        sc = Scenario
        liar = self.server.liar
        # Scenarios that do not look at the file.
        if scenario is sc.STALL_HEADERS:
            liar._hold(self.connection, None)
            self.close_connection = True
            raise _HangupError
        if scenario is sc.STATUS_500:
            self._simple(500, body=b"internal error (liar)\n")
            return
        if scenario is sc.STATUS_503:
            self._simple(503, [("Retry-After", "0")], b"service unavailable (liar)\n")
            return
        if scenario in (sc.REDIRECT_OTHER_ORIGIN, sc.REDIRECT_SAME_ORIGIN, sc.REDIRECT_LOOP):
            if scenario is sc.REDIRECT_OTHER_ORIGIN:
                location = (opts.redirect_to or "").rstrip("/") + "/" + target.lstrip("/")
            elif scenario is sc.REDIRECT_SAME_ORIGIN:
                location = liar.url.rstrip("/") + MOVED_PREFIX + "/" + target.lstrip("/")
            else:
                location = liar.url.rstrip("/") + "/" + target.lstrip("/")
            self._simple(opts.redirect_status, [("Location", location)])
            return

        f = self._resolve(target)
        if f is None:
            self._simple(404, body=b"not found\n")
            return
        if scenario is sc.BAD_VALIDATORS:
            f.etag, f.last_modified = _bad_validators(opts.validators, f)
        if scenario is sc.STATUS_416:
            self._simple(416, [("Content-Range", f"bytes */{f.size}")])
            return
        validators = [("ETag", f.etag), ("Last-Modified", f.last_modified)]
        if scenario is not sc.IGNORE_PRECONDITIONS and self._precondition_failed(f):
            self._simple(412, validators)
            return

        ranges = _parse_ranges(self.headers.get("Range"), f.size)
        if scenario in (sc.FULL_200, sc.FULL_200_HUGE):
            ranges = None
        if ranges == []:
            self._simple(416, [("Content-Range", f"bytes */{f.size}"), *validators])
            return

        # The body: parts (ranged) or the whole file.
        headers: list[tuple[str, str]] = [("Accept-Ranges", "bytes"), *validators]
        if ranges is None:
            status = 200
            body = b"" if head else f.read(0, f.size - 1)
            headers.insert(0, ("Content-Type", "application/octet-stream"))
        else:
            parts = [_Part(s, e, f.size, b"" if head else f.read(s, e)) for s, e in ranges]
            multipart = len(ranges) >= 2
            if not head:
                parts, multipart = _lie_about_parts(scenario, parts, f, multipart)
            status = 206
            if multipart:
                headers.insert(0, ("Content-Type", f"multipart/byteranges; boundary={BOUNDARY}"))
                body = b"" if head else _multipart(parts)
            else:
                p = parts[0]
                headers.insert(0, ("Content-Type", "application/octet-stream"))
                headers.append(("Content-Range", f"bytes {p.start}-{p.end}/{p.total}"))
                body = p.data
        length = len(body) if not head else self._head_length(ranges, f)

        if scenario is sc.GZIP:
            body = gzip.compress(body)
            length = len(body)
            headers.append(("Content-Encoding", "gzip"))
        elif scenario is sc.GZIP_LYING:
            headers.append(("Content-Encoding", "gzip"))
        elif scenario is sc.HEADER_FLOOD:
            headers.extend(_flood(opts.flood_bytes))
        self._deliver(scenario, opts, status, headers, body, length, head=head)

    def _head_length(self, ranges: list[tuple[int, int]] | None, f: _File) -> int:
        """``Content-Length`` a ``HEAD`` announces: that of the matching ``GET``."""
        if ranges is None:
            return f.size
        parts = [_Part(s, e, f.size, b"\0" * (e - s + 1)) for s, e in ranges]
        if len(parts) == 1:
            return len(parts[0].data)
        return len(_multipart(parts))

    def _deliver(
        self,
        scenario: Scenario,
        opts: Options,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        length: int,
        *,
        head: bool,
    ) -> None:
        """Write head and body, the way ``scenario`` says."""
        sc = Scenario
        liar = self.server.liar
        if scenario is sc.HTTP09:
            self.close_connection = True
            self._write(body)
            raise _HangupError
        if scenario in (sc.CHUNKED, sc.CHUNKED_ENDLESS):
            self._head(status, [*headers, ("Transfer-Encoding", "chunked")])
            if head:
                return
            sizes = (1, 7, 1000, 4096, 65536)
            pos, i = 0, 0
            while pos < len(body):
                piece = body[pos : pos + sizes[i % len(sizes)]]
                self._write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                pos += len(piece)
                i += 1
            if scenario is sc.CHUNKED:
                self._write(b"0\r\n\r\n")
                return
            zeros = b"\0" * opts.piece
            chunk = f"{len(zeros):x}\r\n".encode() + zeros + b"\r\n"
            while not liar._stopping.is_set():
                self._write(chunk)
                if opts.interval:
                    liar._stopping.wait(opts.interval)
            self.close_connection = True
            raise _HangupError
        if scenario is sc.NO_CONTENT_LENGTH_CLOSE:
            self.close_connection = True
            self._head(status, [*headers, ("Connection", "close")])
            if not head:
                self._write(body)
            raise _HangupError
        claimed = HUGE_LENGTH if scenario in (sc.HUGE_CONTENT_LENGTH, sc.FULL_200_HUGE) else length
        head_kw: dict[str, Any] = {}
        if scenario is sc.BAD_STATUS_LINE:
            head_kw["status_line"] = f"HTTP/1.1 OK {status}"
        self._head(status, [*headers, ("Content-Length", str(claimed))], **head_kw)
        if head:
            return
        if scenario is sc.SHORT_BODY:
            self._write(body[: len(body) // 2])
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            raise _HangupError
        if scenario is sc.RESET_MID_BODY:
            self._write(body[: len(body) // 2])
            _reset(self.connection)
            self.close_connection = True
            raise _HangupError
        if scenario is sc.TRICKLE:
            for pos in range(0, len(body), opts.piece):
                if pos and opts.interval and liar._stopping.wait(opts.interval):
                    raise _HangupError
                self._write(body[pos : pos + opts.piece])
            return
        self._write(body)
        if claimed != length:
            if opts.keep_open:
                liar._hold(self.connection, None)
            self.close_connection = True
            raise _HangupError


def _multipart(parts: list[_Part]) -> bytes:
    """A ``multipart/byteranges`` body, laid out as nginx does."""
    out = bytearray()
    for p in parts:
        out += (
            f"\r\n--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: bytes {p.start}-{p.end}/{p.total}\r\n\r\n"
        ).encode("latin-1")
        out += p.data
    out += f"\r\n--{BOUNDARY}--\r\n".encode("latin-1")
    return bytes(out)


def _lie_about_parts(
    scenario: Scenario, parts: list[_Part], f: _File, multipart: bool
) -> tuple[list[_Part], bool]:
    """The parts (and multipart or not) ``scenario`` sends instead of ``parts``."""
    sc = Scenario
    if scenario in MULTIPART_SCENARIOS and not multipart:
        return parts, multipart
    if scenario is sc.DUPLICATE_PART:
        p = parts[0]
        return [p, replace(p, data=_flip(p.data)), *parts[1:]], True
    if scenario is sc.OVERLAPPING_PARTS:
        a, b = parts[0], parts[1]
        # b now starts up to 4 bytes inside a, and the shared bytes disagree.
        start = max(a.start, a.end - 3)
        shared_end = min(a.end, b.end)
        data = f.read(start, b.end)
        n_shared = max(0, shared_end - start + 1)
        data = _flip(data[:n_shared]) + data[n_shared:]
        return [a, _Part(start, b.end, f.size, data), *parts[2:]], True
    if scenario is sc.EXTRA_PART:
        last = max(p.end for p in parts)
        first = min(p.start for p in parts)
        if last + EXTRA_BYTES < f.size:
            s, e = last + 1, last + EXTRA_BYTES
        elif first >= 1:
            s, e = max(0, first - EXTRA_BYTES), first - 1
        else:
            return parts, multipart
        return [parts[0], _Part(s, e, f.size, f.read(s, e)), *parts[1:]], True
    if scenario is sc.MISSING_PART:
        return parts[:-1], True
    if scenario is sc.MERGED_PARTS:
        ordered = sorted(parts, key=lambda p: p.start)
        merged = []
        for i in range(0, len(ordered), 2):
            group = ordered[i : i + 2]
            s, e = min(p.start for p in group), max(p.end for p in group)
            merged.append(_Part(s, e, f.size, f.read(s, e)))
        return merged, len(merged) > 1
    if scenario is sc.REORDERED_PARTS:
        return parts[::-1], True
    if scenario is sc.WRONG_CONTENT_RANGE:
        out = []
        for p in parts:
            n = p.end - p.start + 1
            if p.end + n < f.size:
                s = p.end + 1
            elif p.start - n >= 0:
                s = p.start - n
            elif n > 1:  # the whole file asked: name (and send) one byte less
                s, n = 1, n - 1
            else:
                out.append(p)
                continue
            out.append(_Part(s, s + n - 1, f.size, f.read(s, s + n - 1)))
        return out, multipart
    if scenario is sc.LONG_BODY:
        out = []
        for p in parts:
            more = f.read(p.end + 1, p.end + EXTRA_BYTES)
            more += b"\xa5" * (EXTRA_BYTES - len(more))
            out.append(replace(p, data=p.data + more))
        return out, multipart
    if scenario is sc.WRONG_TOTAL:
        return [replace(p, total=p.total + 1000) for p in parts], multipart
    return parts, multipart


def _bad_validators(variant: str, f: _File) -> tuple[str, str]:
    """A hostile (ETag, Last-Modified) pair of the named variant."""
    if variant == "control":
        return f'"{int(f.mtime):x}\x01-{f.size:x}\x7f"', f.last_modified.replace(" ", "\x01", 1)
    if variant == "long":
        return '"' + "e" * 8192 + '"', f.last_modified
    if variant == "unquoted":
        return f.etag.strip('"'), f.last_modified
    if variant == "weak":
        return "W/" + f.etag, f.last_modified
    return f.etag, "not a date, " + "x" * 40


def _flood(total: int) -> list[tuple[str, str]]:
    """About ``total`` bytes of headers, in lines of ~1 KB (under common per-line limits)."""
    value = "f" * 1000
    return [(f"X-Flood-{i:05d}", value) for i in range(max(1, total // 1016))]


def _reset(sock: socket.socket) -> None:
    """Close with RST (linger 0) instead of an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class LiarServer(Service):
    """An HTTP/1.1 file server on ``127.0.0.1`` that lies in one chosen way.

    Parameters
    ----------
    root
        Directory to serve; ``{url}{relative path}`` fetches a file under it.
    scenario
        The initial misbehaviour (:class:`Scenario` or its string value).
    tls
        Serve HTTPS with this test CA's server certificate; :attr:`url` is
        then ``https://127.0.0.1:PORT/``.
    options, knobs
        The scenario's knobs (:class:`Options`, or its fields as keywords).

    Use as a context manager or call :meth:`start` / :meth:`stop`.
    Connections are served by one thread each (hundreds are fine).
    """

    def __init__(
        self,
        root: str | Path,
        scenario: Scenario | str = Scenario.HONEST,
        *,
        tls: TestCA | None = None,
        options: Options | None = None,
        **knobs: Any,
    ) -> None:
        self.root = Path(root).resolve()
        self.tls = tls
        self._ssl: ssl.SSLContext | None = None
        if tls is not None:
            from tessera_vz.testing.tls import server_context

            self._ssl = server_context(tls)
        self._lock = threading.Lock()
        self._scenario = Scenario.HONEST
        self._options = Options()
        self._matched = 0
        self.set_scenario(scenario, options, **knobs)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._conn_count = 0
        self.log: list[LiarRequest] = []

    # -- lifecycle -------------------------------------------------------

    def start(self) -> Self:
        """Listen on a free port and serve in a background thread."""
        if self._server is not None:
            return self
        if not self.root.is_dir():
            raise FileNotFoundError(f"cannot serve {self.root}: not a directory")
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.liar = self
        self._server = server
        self._thread = serve_in_thread(server)
        logger.info("liar serving %s at %s (%s)", self.root, self.url, self._scenario)
        return self

    def stop(self) -> None:
        """Stop serving; stalled, trickling and idle connections are cut at once."""
        self._stopping.set()
        server, self._server = self._server, None
        stop_server(server, self._thread)
        self._thread = None
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("liar server is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL with a trailing slash: ``http(s)://127.0.0.1:PORT/``."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/"

    # -- control ---------------------------------------------------------

    @property
    def scenario(self) -> Scenario:
        return self._scenario

    @property
    def options(self) -> Options:
        return self._options

    def set_scenario(
        self, scenario: Scenario | str, options: Options | None = None, **knobs: Any
    ) -> None:
        """Switch the misbehaviour; ``options`` and/or ``knobs`` replace the options.

        ``set_scenario("redirect_other_origin", redirect_to=other.url)`` is
        ``set_scenario(..., Options(redirect_to=other.url))``. The ``first``
        counter starts from zero. Answers already being written keep their
        scenario.
        """
        sc = Scenario(scenario)
        opts = replace(options or Options(), **knobs)
        opts.check(sc)
        with self._lock:
            self._scenario, self._options, self._matched = sc, opts, 0

    def requests(self, min_count: int = 0, timeout: float = 2.0) -> list[LiarRequest]:
        """Requests received so far, oldest first; wait up to ``timeout`` for ``min_count``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                out = list(self.log)
            if len(out) >= min_count or time.monotonic() >= deadline:
                return out
            time.sleep(0.01)

    def clear_log(self) -> None:
        with self._lock:
            self.log = []

    # -- used by the handler ---------------------------------------------

    def _decide(self, target: str) -> tuple[Scenario, Options]:
        with self._lock:
            sc, opts = self._scenario, self._options
            if sc is Scenario.HONEST or urlsplit(target).path.startswith(MOVED_PREFIX + "/"):
                return Scenario.HONEST, opts
            if opts.path is not None and opts.path not in target:
                return Scenario.HONEST, opts
            self._matched += 1
            if opts.first is not None and self._matched > opts.first:
                return Scenario.HONEST, opts
            return sc, opts

    def _next_connection(self) -> int:
        with self._lock:
            self._conn_count += 1
            return self._conn_count

    def _record(self, rec: LiarRequest) -> None:
        with self._lock:
            self.log.append(rec)
        logger.debug("liar %s %s -> %s", rec.method, rec.target, rec.scenario)

    def _track(self, sock: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(sock)
            else:
                self._conns.discard(sock)

    def _hold(self, sock: socket.socket, seconds: float | None) -> None:
        """Keep a connection open, sending nothing, until the client leaves or we stop."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self._stopping.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return
            try:
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable and not sock.recv(65536):
                    return
            except (OSError, ValueError):
                return


def _serve_in_child(
    conn: Any, root: str, scenario: str, tls: TestCA | None, knobs: dict[str, Any]
) -> None:
    """Body of :class:`LiarProcess`'s child: run a server and obey the pipe."""
    with LiarServer(root, scenario, tls=tls, **knobs) as server:
        conn.send(server.url)
        while True:
            try:
                command, args, kwargs = conn.recv()
            except EOFError:
                return
            if command == "stop":
                conn.send(None)
                return
            try:
                conn.send(("ok", getattr(server, command)(*args, **kwargs)))
            except Exception as exc:  # reported to the parent, which raises it
                conn.send(("error", exc))


class LiarProcess(Service):
    """A :class:`LiarServer` in a child process, driven the same way.

    The reader's memory bounds are measured with ``tracemalloc``, which sees
    every thread of a process: a server in the test's own process would count
    the files it reads to lie with. In a child, only the client is measured.
    Same constructor, :attr:`url`, :meth:`set_scenario`, :meth:`requests` and
    :meth:`clear_log` as :class:`LiarServer`.
    """

    def __init__(
        self,
        root: str | Path,
        scenario: Scenario | str = Scenario.HONEST,
        *,
        tls: TestCA | None = None,
        **knobs: Any,
    ) -> None:
        self._args = (str(Path(root).resolve()), str(Scenario(scenario)), tls, knobs)
        self._proc: Any = None
        self._conn: Any = None
        self.url = ""

    def start(self) -> Self:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_in_child, args=(child, *self._args), daemon=True)
        self._proc.start()
        if not parent.poll(30):
            self._proc.kill()
            raise RuntimeError("the liar process did not start within 30 s")
        self.url = parent.recv()
        self._conn = parent
        return self

    def _call(self, command: str, *args: Any, **kwargs: Any) -> Any:
        if self._conn is None:
            raise RuntimeError("liar process is not running")
        self._conn.send((command, args, kwargs))
        status, value = self._conn.recv()
        if status == "error":
            raise value
        return value

    def set_scenario(
        self, scenario: Scenario | str, options: Options | None = None, **knobs: Any
    ) -> None:
        self._call("set_scenario", scenario, options, **knobs)

    def requests(self, min_count: int = 0, timeout: float = 2.0) -> list[LiarRequest]:
        return list(self._call("requests", min_count, timeout))

    def clear_log(self) -> None:
        self._call("clear_log")

    def stop(self) -> None:
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is not None:
            with contextlib.suppress(OSError, EOFError):
                conn.send(("stop", (), {}))
                conn.recv()
            conn.close()
        if proc is not None:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
