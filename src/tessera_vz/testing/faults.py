"""A fault-injecting HTTP proxy to put in front of :class:`~tessera_vz.testing.nginx.NginxServer`.

Real mirrors fail in a handful of ways: a 503 under load, a connection reset
by a load balancer, a response that stalls, a body cut short although its
``Content-Length`` promised more. Mocks of the HTTP client would test our
assumptions about those failures; this proxy produces them on the wire, so
obstore's and icechunk's real retry, timeout and error paths run.

The proxy forwards every request to an upstream server (keep-alive on both
sides) unless a :class:`Fault` rule matches it. Rules can be changed while
the proxy runs, so a test can index *through* the proxy (its URL is what the
repository records as the source) and switch faults on only for the reads.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import random
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Self
from urllib.parse import urlsplit

from tessera_vz.testing.service import Service, serve_in_thread, stop_server

if TYPE_CHECKING:
    from tessera_vz.testing.tls import TestCA

logger = logging.getLogger(__name__)

FaultKind = Literal["503", "reset", "stall", "short", "delay"]
_KINDS = ("503", "reset", "stall", "short", "delay")
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}
)


@dataclass
class Fault:
    """Which requests to break and how.

    Parameters
    ----------
    kind
        ``"503"`` answers 503 Service Unavailable with an empty body;
        ``"reset"`` closes the connection with a TCP RST before answering;
        ``"stall"`` accepts the request and sends nothing for ``seconds``;
        ``"short"`` sends the upstream headers (full ``Content-Length``) but
        only half the body, then closes; ``"delay"`` waits ``seconds`` and
        then answers normally (a slow but healthy server).
    path
        Only requests whose path contains this substring (default: all).
    first
        Only the first ``first`` matching requests (a transient fault).
    every
        Only every ``every``-th matching request (1-based: the ``every``-th,
        ``2*every``-th, ...).
    rate
        Only a random fraction ``rate`` (0-1) of the matching requests, drawn
        from a generator seeded with ``seed``: a mirror failing at random
        under load. Which requests fail depends on the order they arrive in,
        but the rate and the seed make a run repeatable in distribution.
    seed
        Seed of the ``rate`` draws (default 0).
    seconds
        Duration of a stall or delay.
    methods
        HTTP methods affected (default: all).
    """

    kind: FaultKind
    path: str | None = None
    first: int | None = None
    every: int | None = None
    seconds: float = 30.0
    methods: tuple[str, ...] | None = None
    rate: float | None = None
    seed: int = 0
    matched: int = field(default=0, init=False)
    applied: int = field(default=0, init=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"fault kind must be one of {_KINDS}, got {self.kind!r}")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must lie in [0, 1], got {self.rate!r}")
        self._rng = random.Random(self.seed)

    def _decide(self, method: str, path: str) -> bool:
        """Count a matching request and say whether the fault applies to it."""
        if self.path is not None and self.path not in path:
            return False
        if self.methods is not None and method not in self.methods:
            return False
        self.matched += 1
        n = self.matched
        if self.first is not None and n > self.first:
            return False
        if self.every is not None and n % self.every != 0:
            return False
        if self.rate is not None and self._rng.random() >= self.rate:
            return False
        self.applied += 1
        return True


@dataclass(frozen=True)
class ProxiedRequest:
    """One request the proxy saw and what it did with it (``fault`` None: forwarded)."""

    method: str
    path: str
    range: str | None
    fault: str | None
    time: float


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Clients open dozens of connections at once; socketserver's default
    # backlog of 5 drops SYNs and turns each drop into a 1 s retransmit.
    request_queue_size = 256
    proxy: FaultProxy


class _Handler(socketserver.StreamRequestHandler):
    """Parse HTTP/1.1 requests off one client connection; forward or break each."""

    server: _Server
    _dead = False

    def setup(self) -> None:
        # Over TLS the proxy ends the client's TLS here and speaks plain HTTP
        # to nginx, so its rules see every request as on a plain mirror.
        ctx = self.server.proxy._ssl
        if ctx is not None:
            try:
                self.request = ctx.wrap_socket(self.request, server_side=True)
            except (ssl.SSLError, OSError):
                self._dead = True
        super().setup()

    def handle(self) -> None:
        if self._dead:
            return
        proxy = self.server.proxy
        upstream: http.client.HTTPConnection | None = None
        try:
            while not proxy._stopping.is_set():
                line = self.rfile.readline(65537)
                if not line:
                    return
                parts = line.decode("latin-1").split()
                if len(parts) != 3:
                    return
                method, path, _version = parts
                headers: list[tuple[str, str]] = []
                while True:
                    h = self.rfile.readline(65537)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.decode("latin-1").partition(":")
                    headers.append((name.strip(), value.strip()))
                lower = {k.lower(): v for k, v in headers}
                length = int(lower.get("content-length", "0") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._match(method, path)
                proxy._log(method, path, lower.get("range"), fault)
                if fault is not None and fault.kind == "503":
                    self._send(503, [("Content-Length", "0"), ("Retry-After", "0")], b"")
                    continue
                if fault is not None and fault.kind == "reset":
                    self._reset()
                    return
                if fault is not None and fault.kind == "stall":
                    proxy._stopping.wait(fault.seconds)
                    return
                if fault is not None and fault.kind == "delay":
                    proxy._stopping.wait(fault.seconds)
                forward = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP]
                resp = None
                # A kept-alive upstream connection may have been closed by
                # nginx meanwhile: retry once on a fresh one before a 502.
                for _attempt in range(2):
                    if upstream is None:
                        upstream = http.client.HTTPConnection(
                            proxy.upstream_host, proxy.upstream_port, timeout=30
                        )
                    try:
                        upstream.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                        for k, v in forward:
                            upstream.putheader(k, v)
                        upstream.endheaders(body or None)
                        resp = upstream.getresponse()
                        data = resp.read()
                        break
                    except (OSError, http.client.HTTPException):
                        upstream.close()
                        upstream = None
                        resp = None
                if resp is None:
                    self._send(502, [("Content-Length", "0")], b"")
                    continue
                if resp.will_close and upstream is not None:
                    upstream.close()
                    upstream = None
                out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
                if fault is not None and fault.kind == "short":
                    self._send(resp.status, out, data[: len(data) // 2], reason=resp.reason)
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._send(resp.status, out, data, reason=resp.reason)
        except (ConnectionError, OSError):
            return
        finally:
            if upstream is not None:
                upstream.close()

    def _send(
        self, status: int, headers: Iterable[tuple[str, str]], body: bytes, reason: str = ""
    ) -> None:
        reason = reason or http.client.responses.get(status, "")
        head = [f"HTTP/1.1 {status} {reason}"]
        head += [f"{k}: {v}" for k, v in headers]
        head.append("Connection: keep-alive")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        self.wfile.flush()

    def _reset(self) -> None:
        """Close with RST (linger 0) instead of an orderly FIN."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class FaultProxy(Service):
    """An HTTP proxy on ``127.0.0.1`` that forwards to ``upstream`` or injects faults.

    Parameters
    ----------
    upstream
        Base URL of the real server, e.g. ``NginxServer.url``.
    faults
        Initial rules (see :meth:`set_faults`); none means pure passthrough.
    tls
        Serve HTTPS with this test CA's server certificate (clients see an
        ``https://`` mirror; the proxy forwards to ``upstream`` over HTTP).

    Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self, upstream: str, faults: Iterable[Fault] = (), *, tls: TestCA | None = None
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self._faults: list[Fault] = list(faults)
        self.tls = tls
        self._ssl: ssl.SSLContext | None = None
        if tls is not None:
            from tessera_vz.testing.tls import server_context

            self._ssl = server_context(tls)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.log: list[ProxiedRequest] = []

    def start(self) -> Self:
        """Listen on a free port and serve in a background thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy = self
        self._server = server
        self._thread = serve_in_thread(server)
        logger.info("fault proxy on %s -> %s:%d", self.url, self.upstream_host, self.upstream_port)
        return self

    def stop(self) -> None:
        """Stop serving; stalled connections are released at once."""
        self._stopping.set()
        server, self._server = self._server, None
        stop_server(server, self._thread)
        self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("fault proxy is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL with a trailing slash: ``http(s)://127.0.0.1:PORT/``."""
        return f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{self.port}/"

    def set_faults(self, faults: Iterable[Fault]) -> None:
        """Replace the rules (their counters start from zero); ``[]`` is passthrough."""
        with self._lock:
            self._faults = list(faults)

    def clear_log(self) -> None:
        with self._lock:
            self.log = []

    def faulted(self) -> list[ProxiedRequest]:
        """Requests that were answered with a fault."""
        with self._lock:
            return [r for r in self.log if r.fault is not None]

    def _match(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f._decide(method, path):
                    return f
        return None

    def _log(self, method: str, path: str, rng: str | None, fault: Fault | None) -> None:
        with self._lock:
            self.log.append(
                ProxiedRequest(method, path, rng, fault.kind if fault else None, time.time())
            )
        if fault is not None:
            logger.debug("fault %s on %s %s", fault.kind, method, path)
