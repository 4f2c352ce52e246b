"""One pooled aiohttp client per event loop, for ranged reads of HTTPS and proxied mirrors.

Plain ``http://`` mirrors are read by :mod:`~tessera_vz.reader.receive`,
which receives bodies in place; this client serves the others (TLS, and
``HTTP(S)_PROXY``), and :func:`quick_ack` is shared by both.

obstore pools connections per store, so its ranged reads cost one request
each. aiohttp, which multi-range requests need, pools them per
``ClientSession``: a session opened for each window or list of points paid
a new TCP connection per request (21 for a 300-row window, with aiohttp's
Python connection setup about a sixth of its time) and aiohttp's
environment lookups (proxies, netrc) on every request. Reads run on zarr's
long-lived event loop, so one session per loop, created on first use and
closed at exit, keeps connections warm the way obstore's stores do. Proxies
come from the environment once per root, as obstore's client reads
``HTTP(S)_PROXY``/``NO_PROXY``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import socket
import threading
import urllib.request
from urllib.parse import urlsplit

import aiohttp
import zarr.core.sync  # noqa: F401  (its exit hook stops the loop; ours must run first)

log = logging.getLogger(__name__)

#: Connections per loop, like Icechunk's partial-value concurrency.
CONNECTIONS = 64

_SESSIONS: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
_LOCK = threading.Lock()


def session() -> aiohttp.ClientSession:
    """The running loop's HTTP client (created on first use)."""
    loop = asyncio.get_running_loop()
    with _LOCK:
        got = _SESSIONS.get(loop)
        if got is None or got.closed:
            for old in [lp for lp in _SESSIONS if lp.is_closed()]:
                _drop(_SESSIONS.pop(old))
            got = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=CONNECTIONS), trust_env=False
            )
            _SESSIONS[loop] = got
        return got


@functools.lru_cache(maxsize=256)
def proxy_for(root: str) -> str | None:
    """The proxy the environment names for ``root``, or ``None`` (read once per root)."""
    parts = urlsplit(root)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def quick_ack(resp: aiohttp.ClientResponse) -> None:
    """Acknowledge the rest of ``resp`` at once instead of after the delayed-ACK timer.

    nginx with ``tcp_nopush`` (Debian's default) sends an answer's last
    small segment only once the previous one is acknowledged, and the kernel
    delays that acknowledgement by 40 ms: measured, 17 of 200 multi-range
    requests took 44 ms instead of 2, and 179 of 200 single ranges of two
    segments. Quick-ACK mode (Linux) removes the wait: none of 200 with
    :func:`read_body`.
    """
    quick = getattr(socket, "TCP_QUICKACK", None)
    transport = resp.connection.transport if resp.connection is not None else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if quick is not None and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quick, 1)


async def read_body(resp: aiohttp.ClientResponse) -> bytes:
    """The body of ``resp``, acknowledging each piece at once (see :func:`quick_ack`).

    Quick-ACK mode lapses after a few segments, and the segment an answer
    waits on is its last, so it is asked for again as each piece arrives.
    """
    pieces = []
    async for piece in resp.content.iter_any():
        pieces.append(piece)
        quick_ack(resp)
    return b"".join(pieces)


def _drop(client: aiohttp.ClientSession) -> None:
    """Mark closed a client whose loop is closed (its sockets went with the loop).

    Closing then has nothing to wait for, so the coroutine finishes on its
    first step without a loop.
    """
    closing = client.close()
    try:
        closing.send(None)
    except StopIteration:
        return
    except Exception:
        log.debug("could not close an HTTP client of a closed loop", exc_info=True)
    closing.close()


@atexit.register
def _close_all() -> None:
    """Close every client on its own loop before zarr's exit hook stops that loop."""
    with _LOCK:
        clients = list(_SESSIONS.items())
        _SESSIONS.clear()
    for loop, client in clients:
        if loop.is_running():
            future = asyncio.run_coroutine_threadsafe(client.close(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout=1.0)
        elif not loop.is_closed():
            with contextlib.suppress(Exception):
                loop.run_until_complete(client.close())
        else:
            _drop(client)
