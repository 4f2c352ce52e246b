"""Ranged HTTP/1.1 GETs whose bodies are received straight into their destination.

A window's rows land in a NumPy array; any HTTP client first collects a
body in a buffer of its own (obstore in Rust memory, aiohttp in a chain of
Python ``bytes``), and the reader then copies it into the window. On this
2-core machine that copy, the fresh buffer's page faults and, for aiohttp,
its per-chunk Python work cost more than the transfer: measured over
loopback nginx, 300 rows of a real-size tile (30 MB, best and median of
12) took 13 and 24 ms through obstore, 17 and 28 ms with the copy into a
window, and 8 and 15 ms received with ``recv_into`` straight into the
window's rows, one destination per row. asyncio's :class:`~asyncio.BufferedProtocol` does
exactly that: the event loop asks the protocol where the next bytes go.

This module is that client, and only as much of HTTP/1.1 as ranged reads
of static files need: ``GET`` with caller headers, a status line and
headers, a ``Content-Length`` body (anything else, such as a chunked body,
is :class:`ReceiveError`, as is a connection closed early), keep-alive
connections pooled per event loop and origin, TCP quick ACKs (see
:func:`~tessera_vz.reader.client.quick_ack`), and a body read only when
the caller wants it (a 200 with a whole file, or an error status, closes
the connection instead). Plain ``http://`` origins without a proxy use it;
:mod:`~tessera_vz.reader.sources` keeps the other clients for the rest.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: Largest status line plus headers accepted (nginx answers with ~250 bytes).
MAX_HEAD = 64 * 1024
#: Idle keep-alive connections kept per event loop and origin.
IDLE = 64


class ReceiveError(ConnectionError):
    """The connection failed, or the answer is not a plain HTTP/1.1 ``Content-Length`` body."""


@dataclass(frozen=True)
class Head:
    """Status and headers of an answer (header names lower case)."""

    status: int
    reason: str
    headers: Mapping[str, str]


#: Given the answer's head, where its body goes: consecutive writable byte
#: views whose lengths add up to the body's, or ``None`` to leave it unread.
Destinations = Callable[[Head], Sequence[memoryview] | None]


def parse_head(raw: bytes) -> Head:
    """Status line and headers (without the blank line) of an HTTP/1.x answer."""
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ReceiveError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ReceiveError(f"malformed header line: {line[:80]!r}")
        key, value = name.strip().lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return Head(int(code), reason, headers)


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection: one request at a time, its body received in place.

    State is real here (where the next bytes go, which request waits), so
    a class; the event loop drives it through ``get_buffer`` and
    ``buffer_updated``.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self.answered = False  # any byte of an answer arrived on this connection
        self._sock: socket.socket | None = None
        self._scratch = bytearray(MAX_HEAD)
        self._head = bytearray()
        self._dests: Sequence[memoryview] = ()
        self._k = self._pos = 0
        self._phase = "idle"  # "head", "body", "idle"
        self._want: Destinations | None = None
        self._answer: Head | None = None
        self._waiter: asyncio.Future[Head] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        # The transport's socket is a wrapper without recv_into; a duplicate
        # descriptor is the same non-blocking socket, for _drain.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._sock = socket.socket(fileno=os.dup(sock.fileno()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._sock is not None:
            self._sock.close()
        reason = f": {exc}" if exc is not None else ""
        self._fail(ReceiveError(f"the connection closed before the answer was whole{reason}"))

    def eof_received(self) -> bool:
        return False  # close; a waiting request fails in connection_lost

    def exchange(self, request: bytes, want: Destinations) -> asyncio.Future[Head]:
        """Send ``request``; the future resolves once the body is where ``want`` said."""
        assert self.transport is not None and self._phase == "idle"
        self._waiter = asyncio.get_running_loop().create_future()
        self._want, self._phase, self._head = want, "head", bytearray()
        self.transport.write(request)
        self._quick_ack()
        return self._waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def forget(self) -> None:
        """Let go of a connection whose event loop closed (its transport went with it)."""
        self.reusable = False
        if self._sock is not None:
            self._sock.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._phase == "body":
            return self._dests[self._k][self._pos :]
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        self.answered = True
        self._quick_ack()
        try:
            if self._phase == "body":
                self._pos += nbytes
                self._advance()
                self._drain()
            elif self._phase == "head":
                self._head += memoryview(self._scratch)[:nbytes]
                self._read_head()
            else:
                raise ReceiveError(f"{nbytes} bytes arrived that no request asked for")
        except Exception as exc:
            self._fail(exc)
            self.close()

    def _drain(self) -> None:
        """Receive what the socket holds now, destination after destination.

        The event loop calls ``recv_into`` once per readiness, so a body
        spread over hundreds of window rows would cost a loop iteration
        per row; reading on until the socket is empty costs a system call.
        """
        sock = self._sock
        while sock is not None and self._phase == "body":
            try:
                got = sock.recv_into(self._dests[self._k][self._pos :])
            except (BlockingIOError, InterruptedError):
                self._quick_ack()  # about to wait: the server may be waiting on our ACK
                return
            if got == 0:  # end of stream: the transport sees it on its next read
                return
            self._pos += got
            self._advance()

    def _quick_ack(self) -> None:
        # Quick-ACK mode lapses after a few segments; the segment an answer
        # waits on is its last, so ask again as each piece arrives.
        if self._sock is not None and _QUICKACK is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def _read_head(self) -> None:
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD:
                raise ReceiveError(f"no end of headers in the first {MAX_HEAD} bytes")
            return
        head = parse_head(bytes(self._head[:end]))
        rest = bytes(self._head[end + 4 :])
        self._head = bytearray()
        assert self._want is not None
        dests = self._want(head)
        if dests is None:  # the caller leaves this body unread: the connection goes
            self.reusable = False
            self._phase = "idle"
            self._resolve(head)
            return
        if "chunked" in head.headers.get("transfer-encoding", "").lower():
            raise ReceiveError("a chunked body where a Content-Length body was expected")
        length = head.headers.get("content-length", "")
        expected = sum(len(d) for d in dests)
        if not length.isdigit() or int(length) != expected:
            raise ReceiveError(f"Content-Length {length or 'missing'}, expected {expected} bytes")
        if "close" in head.headers.get("connection", "").lower():
            self.reusable = False
        self._dests, self._k, self._pos, self._phase = dests, 0, 0, "body"
        self._answer = head
        self._feed(memoryview(rest))
        self._advance()

    def _feed(self, data: memoryview) -> None:
        """Bytes of the body that arrived with the headers."""
        at = 0
        while at < len(data):
            if self._k >= len(self._dests):
                raise ReceiveError(f"{len(data) - at} bytes past the end of the body")
            dest = self._dests[self._k]
            n = min(len(dest) - self._pos, len(data) - at)
            dest[self._pos : self._pos + n] = data[at : at + n]
            at += n
            self._pos += n
            self._advance()

    def _advance(self) -> None:
        while self._k < len(self._dests) and self._pos >= len(self._dests[self._k]):
            self._k += 1
            self._pos = 0
        if self._phase == "body" and self._k >= len(self._dests):
            self._phase = "idle"
            self._dests = ()
            assert self._answer is not None
            self._resolve(self._answer)

    def _resolve(self, head: Head) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(head)

    def _fail(self, exc: BaseException) -> None:
        self._phase = "idle"
        self._dests = ()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
_Origin = tuple[str, str, int]
_IDLE: dict[asyncio.AbstractEventLoop, dict[_Origin, list[_Connection]]] = {}
_LOCK = threading.Lock()


def handles(url: str) -> bool:
    """Whether this client reads ``url``: plain ``http://`` (TLS and proxies go elsewhere)."""
    return urlsplit(url).scheme == "http"


async def get(url: str, headers: Mapping[str, str], want: Destinations, timeout: float) -> Head:
    """``GET url`` with ``headers``; the body, if ``want`` takes it, lands where it says.

    A kept-alive connection the server closed while idle fails before any
    answer; that request is sent again once on a new connection. Raises
    :class:`ReceiveError` for a failed connection or an answer this client
    does not read, and :class:`TimeoutError` after ``timeout`` seconds.
    """
    parts = urlsplit(url)
    origin = (parts.scheme, parts.hostname or "", parts.port or 80)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    async with asyncio.timeout(timeout):
        while True:
            conn, reused = await _acquire(origin)
            try:
                head = await conn.exchange(request, want)
            except ReceiveError:
                conn.close()
                if reused and not conn.answered:
                    continue  # an idle connection the server had closed
                raise
            except BaseException:  # timeout or cancellation mid-answer
                conn.close()
                raise
            _release(origin, conn)
            return head


async def _acquire(origin: _Origin) -> tuple[_Connection, bool]:
    loop = asyncio.get_running_loop()
    with _LOCK:
        for gone in [lp for lp in _IDLE if lp.is_closed()]:  # e.g. after asyncio.run
            for conn in (c for conns in _IDLE.pop(gone).values() for c in conns):
                conn.forget()
        idle = _IDLE.setdefault(loop, {}).setdefault(origin, [])
        while idle:
            conn = idle.pop()
            if conn.reusable and conn.transport is not None and not conn.transport.is_closing():
                conn.answered = False
                return conn, True
    try:
        _, conn = await loop.create_connection(_Connection, origin[1], origin[2])
    except OSError as exc:
        raise ReceiveError(f"cannot connect to {origin[1]}:{origin[2]}: {exc}") from None
    return conn, False


def _release(origin: _Origin, conn: _Connection) -> None:
    if not conn.reusable:
        conn.close()
        return
    loop = asyncio.get_running_loop()
    with _LOCK:
        idle = _IDLE.setdefault(loop, {}).setdefault(origin, [])
        if len(idle) < IDLE:
            idle.append(conn)
            return
    conn.close()


@atexit.register
def _close_idle() -> None:
    """Close idle connections on their own loops (the loops may outlive this hook)."""
    with _LOCK:
        pools = list(_IDLE.items())
        _IDLE.clear()
    for loop, origins in pools:
        conns = [c for idle in origins.values() for c in idle]
        if loop.is_closed():
            continue
        for conn in conns:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(conn.close)
