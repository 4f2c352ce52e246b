"""A TCP proxy that adds network latency, streaming, in front of a loopback server.

Loopback answers in microseconds, so a reader tested there never pays for a
round trip and cannot show that it saves them. Real mirrors are tens of
milliseconds away. This kernel has no ``netem`` qdisc, so latency comes from
this proxy: every chunk of bytes it receives is forwarded ``delay`` seconds
later, in each direction, so every request/response exchange costs two
delays more, and so does every round trip of a TLS handshake (the proxy
works on TCP bytes and carries TLS untouched: ``https://127.0.0.1:PROXYPORT/``
verifies against the upstream's certificate, which names ``127.0.0.1``).

It streams: a chunk goes out as soon as its own delay has passed, in order,
whatever follows it, so a large body flows through at loopback speed, only
shifted in time. A proxy that waited for whole bodies would measure itself.
In-flight bytes are bounded per direction (``window``); past it, the proxy
stops reading from the sender, as TCP flow control would.

Byte and connection counters let a benchmark report bytes on the wire.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Self
from urllib.parse import urlsplit

from tessera_vz.testing.service import Service

logger = logging.getLogger(__name__)

#: Default one-way delay: 10 ms each way, 20 ms per round trip.
DEFAULT_DELAY = 0.010
#: Default bytes in flight per direction: 1.6 GB/s at 10 ms, above what the proxy moves.
DEFAULT_WINDOW = 16 << 20
#: Largest chunk read at once; bigger chunks would add their own serialisation delay.
READ_SIZE = 256 * 1024


@dataclass(frozen=True)
class ProxyStats:
    """Counters since start (or :meth:`LatencyProxy.reset_stats`).

    ``bytes_up``: client to upstream; ``bytes_down``: upstream to client;
    ``connections``: client connections accepted; ``active``: still open;
    ``peak_buffered``: most bytes the proxy held at once for one direction
    of one connection (what shows it streams: far below a body's size).
    Bytes are TCP payload, so over TLS they include TLS framing and handshakes.
    """

    bytes_up: int
    bytes_down: int
    connections: int
    active: int
    peak_buffered: int


class _Direction:
    """One direction of one connection: delayed, ordered, bounded forwarding."""

    def __init__(self, pipe: _Pipe, up: bool) -> None:
        self.pipe = pipe
        self.up = up
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.queued = 0
        self.timer: asyncio.TimerHandle | None = None
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        self.sink_paused = False
        self.source_paused = False
        self.closed = False
        # The sender's connection was reset: end ours with a reset too.
        self.reset = False

    def push(self, data: bytes | None, at: float) -> None:
        """Schedule ``data`` (None: end of stream) to leave at ``at``."""
        if self.closed:
            return
        self.queue.append((at, data))
        if data:
            self.queued += len(data)
            proxy = self.pipe.proxy
            if self.queued > proxy._peak:
                proxy._peak = self.queued
        self._throttle()
        if self.timer is None and self.sink is not None:
            self._arm()

    def _arm(self) -> None:
        loop = self.pipe.proxy._loop
        assert loop is not None
        self.timer = loop.call_at(self.queue[0][0], self.flush)

    def flush(self) -> None:
        """Write every chunk whose time has come, in order; re-arm for the next."""
        self.timer = None
        if self.sink is None or self.closed:
            return
        if self.sink.is_closing():
            self.cancel()
            return
        loop = self.pipe.proxy._loop
        assert loop is not None
        now = loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is None:
                self._end()
                return
            self.queued -= len(data)
            self.pipe.proxy._count(self.up, len(data))
            self.sink.write(data)
        self._throttle()
        if self.queue:
            self._arm()

    def _end(self) -> None:
        """The sender closed: pass the FIN on (or close when half-close is not possible)."""
        self.closed = True
        sink = self.sink
        if sink is None or sink.is_closing():
            return
        if self.reset:
            # abort() alone closes with a FIN; linger 0 makes it a RST.
            sock = sink.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sink.abort()
            self.pipe.close()
            return
        if self.pipe.upstream_lost and not self.up:
            # The server closed its connection: close ours to the client
            # (after what is buffered); nothing more can go upstream.
            self.pipe.close()
            return
        try:
            if sink.can_write_eof():
                sink.write_eof()
            else:
                sink.close()
        except OSError:
            # The far end went away first (ENOTCONN): nothing left to half-close.
            self.pipe.close()
            return
        self.pipe.maybe_close()

    def _throttle(self) -> None:
        """Pause reading the sender while too much is in flight or the receiver is full."""
        if self.source is None:
            return
        should_pause = self.sink_paused or self.queued > self.pipe.proxy.window
        if should_pause and not self.source_paused:
            with contextlib.suppress(RuntimeError):
                self.source.pause_reading()
            self.source_paused = True
        elif not should_pause and self.source_paused:
            with contextlib.suppress(RuntimeError):
                self.source.resume_reading()
            self.source_paused = False

    def cancel(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.queued = 0


class _Pipe:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: LatencyProxy) -> None:
        self.proxy = proxy
        self.up = _Direction(self, up=True)
        self.down = _Direction(self, up=False)
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.upstream_lost = False
        self.start = 0.0

    def maybe_close(self) -> None:
        """Close both sides once both directions have ended."""
        if self.up.closed and self.down.closed:
            self.close()

    def close(self) -> None:
        for d in (self.up, self.down):
            d.cancel()
        for t in (self.client, self.upstream):
            if t is not None and not t.is_closing():
                t.close()


class _ClientSide(asyncio.Protocol):
    def __init__(self, proxy: LatencyProxy) -> None:
        self.proxy = proxy
        self.pipe = _Pipe(proxy)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        pipe = self.pipe
        pipe.client = transport
        pipe.up.source = transport
        pipe.down.sink = transport
        loop = self.proxy._loop
        assert loop is not None
        pipe.start = loop.time()
        self.proxy._opened(pipe)
        loop.create_task(self._connect())

    async def _connect(self) -> None:
        proxy, pipe = self.proxy, self.pipe
        loop = proxy._loop
        assert loop is not None
        try:
            transport, _ = await loop.create_connection(
                lambda: _UpstreamSide(pipe), proxy.upstream_host, proxy.upstream_port
            )
        except OSError as e:
            logger.warning("latency proxy: cannot reach upstream: %s", e)
            pipe.close()
            return
        assert isinstance(transport, asyncio.Transport)
        pipe.upstream = transport
        pipe.up.sink = transport
        pipe.down.source = transport
        if pipe.up.queue and pipe.up.timer is None:
            pipe.up._arm()

    def _due(self) -> float:
        loop = self.proxy._loop
        assert loop is not None
        due = loop.time() + self.proxy.delay
        if self.proxy.tcp_handshake:
            # A real client's connect() returns one round trip after SYN; its
            # first bytes cannot reach the server before that and one more
            # one-way delay.
            due = max(due, self.pipe.start + 3 * self.proxy.delay)
        return due

    def data_received(self, data: bytes) -> None:
        self.pipe.up.push(data, self._due())

    def eof_received(self) -> bool:
        self.pipe.up.push(None, self._due())
        return True  # keep our side open for the answer

    def pause_writing(self) -> None:
        self.pipe.down.sink_paused = True
        self.pipe.down._throttle()

    def resume_writing(self) -> None:
        self.pipe.down.sink_paused = False
        self.pipe.down._throttle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy._closed(self.pipe)
        # The client is gone: nothing more can be delivered to it.
        self.pipe.close()


class _UpstreamSide(asyncio.Protocol):
    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def _due(self) -> float:
        loop = self.pipe.proxy._loop
        assert loop is not None
        return loop.time() + self.pipe.proxy.delay

    def data_received(self, data: bytes) -> None:
        self.pipe.down.push(data, self._due())

    def eof_received(self) -> bool:
        self.pipe.down.push(None, self._due())
        return True

    def pause_writing(self) -> None:
        self.pipe.up.sink_paused = True
        self.pipe.up._throttle()

    def resume_writing(self) -> None:
        self.pipe.up.sink_paused = False
        self.pipe.up._throttle()

    def connection_lost(self, exc: Exception | None) -> None:
        # Deliver what the upstream sent before it left, then end the client
        # side the same way: a FIN for a FIN, a reset for a reset.
        self.pipe.upstream_lost = True
        if not self.pipe.down.closed:
            self.pipe.down.reset = isinstance(exc, ConnectionResetError)
            self.pipe.down.push(None, self._due())


class LatencyProxy(Service):
    """A TCP proxy on ``127.0.0.1`` adding ``delay`` seconds each way to ``upstream``.

    Parameters
    ----------
    upstream
        ``http(s)://host:port/`` of the real server (e.g. ``NginxServer.url``)
        or a ``(host, port)`` pair. :attr:`url` keeps the upstream's scheme.
    delay
        One-way delay in seconds, applied to every chunk in both directions.
    tcp_handshake
        Also charge the TCP handshake's round trip: a new connection's first
        bytes leave the proxy no earlier than three one-way delays after it
        was accepted, as on a real network (connect() returns after one
        round trip, then the bytes travel one way). Warm connections are
        unaffected.
    window
        Bytes in flight per direction before the proxy stops reading the
        sender (flow control, so memory stays bounded). The default allows
        1.6 GB/s at 10 ms, more than the proxy itself moves, so it never
        limits throughput; a small one models a narrow TCP window.

    Use as a context manager or call :meth:`start` / :meth:`stop`; the proxy
    runs its own asyncio loop in a background thread.
    """

    def __init__(
        self,
        upstream: str | tuple[str, int],
        *,
        delay: float = DEFAULT_DELAY,
        tcp_handshake: bool = True,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if isinstance(upstream, str):
            parts = urlsplit(upstream)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"upstream must be an http(s):// URL, got {upstream!r}")
            self.scheme = parts.scheme
            self.upstream_host = parts.hostname
            self.upstream_port = parts.port or (443 if parts.scheme == "https" else 80)
        else:
            self.scheme = "http"
            self.upstream_host, self.upstream_port = upstream
        if delay < 0 or window < READ_SIZE:
            raise ValueError(f"delay must be >= 0 and window >= {READ_SIZE}, got {delay}, {window}")
        self.delay = delay
        self.tcp_handshake = tcp_handshake
        self.window = window
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self._pipes: set[_Pipe] = set()
        self._lock = threading.Lock()
        self._up = self._down = self._conns = self._peak = 0

    # -- lifecycle -------------------------------------------------------

    def start(self) -> Self:
        """Listen on a free port (backlog 256) and serve from a background thread."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(lambda: _ClientSide(self), "127.0.0.1", 0, backlog=256)
                )
                self._port = int(self._server.sockets[0].getsockname()[1])
            except BaseException as e:
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="latency-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"latency proxy failed to start: {failure[0]}") from failure[0]
        logger.info(
            "latency proxy %s -> %s:%d (+%.1f ms each way)",
            self.url,
            self.upstream_host,
            self.upstream_port,
            self.delay * 1000,
        )
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and stop the loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for pipe in list(self._pipes):
                pipe.close()
            loop.call_later(0.05, loop.stop)

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(shutdown)
        thread.join(timeout=5)
        self._thread = None
        self._loop = None
        self._server = None
        self._port = None

    # -- introspection ---------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("latency proxy is not running")
        return self._port

    @property
    def url(self) -> str:
        """Base URL with a trailing slash, the upstream's scheme: ``http(s)://127.0.0.1:PORT/``."""
        return f"{self.scheme}://127.0.0.1:{self.port}/"

    def stats(self) -> ProxyStats:
        """Bytes forwarded each way and connections, since start or the last reset."""
        with self._lock:
            return ProxyStats(self._up, self._down, self._conns, len(self._pipes), self._peak)

    def reset_stats(self) -> None:
        """Zero the counters (open connections stay open)."""
        with self._lock:
            self._up = self._down = self._conns = self._peak = 0

    # -- used by the protocols (loop thread) ------------------------------

    def _count(self, up: bool, n: int) -> None:
        with self._lock:
            if up:
                self._up += n
            else:
                self._down += n

    def _opened(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.add(pipe)
            self._conns += 1

    def _closed(self, pipe: _Pipe) -> None:
        with self._lock:
            self._pipes.discard(pipe)
