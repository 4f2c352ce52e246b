"""HTTP(S) requests to tile mirrors on aiohttp, under the boundary's invariants.

This is the only place tessera-vz talks HTTP itself (Icechunk fetches its
own virtual chunks). aiohttp parses the protocol; this module decides what
an answer may be before any of its bytes are used:

- redirects are followed only to origins the caller authorised
  (``allowed(url)``), a few hops at most; obstore's and Icechunk's clients
  follow any redirect, which is why http(s) sources are read here and not
  through obstore;
- ``Accept-Encoding: identity`` is asked and any other ``Content-Encoding``
  refused (a range of a compressed representation is not a range of the
  file), with aiohttp's transparent decompression off;
- a body is read only up to what was asked (:func:`read_exact`) or a cap
  (:func:`read_capped`), whatever ``Content-Length`` or
  ``Transfer-Encoding`` claim, so memory stays bounded by the request;
- one limit bounds a whole attempt (connecting, TLS, redirects, the body),
  so a server that trickles a byte at a time still fails on time.

Connections are pooled in one ``ClientSession`` per event loop (reads run on
one long-lived loop, :mod:`tessera_vz.core.loop`), closed at exit. Proxies
come from the environment once per origin (``HTTP(S)_PROXY``/``NO_PROXY``),
as obstore reads them.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import logging
import ssl
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urljoin, urlsplit

import aiohttp

# Imported first so that its exit hook, which stops the background loop, runs after
# ours below, which closes this module's clients on that loop.
import tessera_vz.core.loop  # noqa: F401
from tessera_vz.core.addresses import PublicResolver, check_literal
from tessera_vz.core.errors import AnswerError, RedirectRefusedError

log = logging.getLogger(__name__)

#: Connections per event loop, like Icechunk's partial-value concurrency.
CONNECTIONS = 64
#: Seconds an idle connection is kept: a point read a minute after the last
#: one should not pay TCP and TLS handshakes again (two more round trips);
#: under the 60-75 s after which nginx and most CDNs close idle connections.
KEEPALIVE = 55.0
#: Redirect hops followed (each to an authorised origin) before giving up.
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

try:
    USER_AGENT = f"tessera-vz/{version('tessera-vz')}"
except PackageNotFoundError:  # running from a source tree without metadata
    USER_AGENT = "tessera-vz"


_SESSIONS: dict[tuple[asyncio.AbstractEventLoop, bool], aiohttp.ClientSession] = {}
_LOCK = threading.Lock()


def session(public_only: bool = False) -> aiohttp.ClientSession:
    """The running loop's HTTP client (created on first use).

    ``public_only`` clients resolve names through
    :class:`~tessera_vz.core.addresses.PublicResolver`: they never connect
    to a loopback, private, link-local or multicast address.
    """
    loop = asyncio.get_running_loop()
    with _LOCK:
        got = _SESSIONS.get((loop, public_only))
        if got is None or got.closed:
            for old in [k for k in _SESSIONS if k[0].is_closed()]:
                _drop(_SESSIONS.pop(old))
            resolver = PublicResolver() if public_only else None
            got = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=CONNECTIONS, keepalive_timeout=KEEPALIVE, resolver=resolver
                ),
                trust_env=False,
                auto_decompress=False,
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
                skip_auto_headers=("Accept",),
            )
            _SESSIONS[(loop, public_only)] = got
        return got


@functools.lru_cache(maxsize=16)
def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Certificate checks on, the system's roots plus ``ca_file`` (a private or test CA)."""
    ctx = ssl.create_default_context()
    if ca_file is not None:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url``'s host, or ``None`` (read once per host).

    Keyed by scheme and host, not URL: a read of points asks for thousands of
    tile URLs, and reading the environment's proxy settings for each (a walk
    over ``os.environ``) was a visible share of its CPU.
    """
    parts = urlsplit(url)
    return _proxy_for_host(parts.scheme, parts.hostname or "")


@functools.lru_cache(maxsize=256)
def _proxy_for_host(scheme: str, host: str) -> str | None:
    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(scheme)


@contextlib.asynccontextmanager
async def answer(
    url: str,
    headers: Mapping[str, str],
    *,
    allowed: Callable[[str], bool],
    ca_file: str | None,
    connect_timeout: float,
    method: str = "GET",
    private_ok: bool = False,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Send a request and yield the final answer, its body unread.

    Redirects are followed by hand, each to a URL ``allowed`` accepts
    (:class:`RedirectRefusedError` otherwise). Unless ``private_ok`` (the
    user allowed this source), no hop connects to a loopback, private,
    link-local or multicast address (:mod:`~tessera_vz.core.addresses`).
    The answer is released to the pool when the caller read its body whole,
    and its connection closed otherwise (an error page, a whole file, a body
    refused half-way).
    """
    limits = aiohttp.ClientTimeout(
        total=None, connect=connect_timeout, sock_connect=connect_timeout
    )
    tls = ssl_context(ca_file) if urlsplit(url).scheme == "https" else None
    for _hop in range(MAX_REDIRECTS + 1):
        if not private_ok:
            check_literal(url)  # names are checked by the resolver, on the address used
        # Through a proxy the user configured, the proxy resolves the name (and the
        # connection goes to the proxy, which may well be on loopback).
        client = session(public_only=not private_ok and proxy_for(url) is None)
        resp = await client.request(
            method, url, headers=dict(headers), allow_redirects=False,
            proxy=proxy_for(url), ssl=tls if tls is not None else True, timeout=limits,
        )  # fmt: skip
        try:
            if resp.status in _REDIRECTS:
                target = _redirect_target(resp, url)
                resp.close()  # never read a redirect's body
                if not allowed(target):
                    raise RedirectRefusedError(
                        f"redirected ({resp.status}) to {target}, an origin you have not "
                        "authorised; if you trust it, authorise it too (allowed_sources, CLI "
                        "--allow-source)"
                    )
                if resp.status == 303:
                    method = "GET"
                url = target
                tls = ssl_context(ca_file) if urlsplit(url).scheme == "https" else None
                continue
            encoding = resp.headers.get("Content-Encoding", "").strip().lower()
            if encoding not in ("", "identity"):
                raise AnswerError(
                    f"answered with Content-Encoding {encoding!r} although asked for identity; "
                    "a range of a compressed representation is not a range of the file"
                )
            yield resp
        except BaseException:
            resp.close()
            raise
        else:
            resp.release()
        return
    raise AnswerError(f"more than {MAX_REDIRECTS} redirects, last to {url}")


def _redirect_target(resp: aiohttp.ClientResponse, url: str) -> str:
    location = resp.headers.get("Location")
    if not location:
        raise AnswerError(f"a {resp.status} redirect without a Location header")
    target = urljoin(url, location)
    if urlsplit(target).scheme not in ("http", "https"):
        raise RedirectRefusedError(f"redirected to {target!r}, which is not an http(s) URL")
    return target


def declared_length(resp: aiohttp.ClientResponse) -> int | None:
    """``Content-Length`` as a number, ``None`` when absent; a malformed one is an error."""
    text = resp.headers.get("Content-Length")
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit():
        raise AnswerError(f"malformed Content-Length {text[:40]!r}")
    return int(text)


async def read_exact(
    resp: aiohttp.ClientResponse, n: int, into: Sequence[memoryview] | None = None
) -> bytearray | None:
    """The body, which must be exactly ``n`` bytes; landed in ``into`` if given.

    ``into`` are consecutive writable views whose lengths add up to ``n``
    (a window's rows): the bytes are copied there as they arrive, never
    collected first. More bytes than ``n`` (whatever the headers said) is
    :class:`AnswerError`; fewer is a transient one (a cut transfer).
    """
    length = declared_length(resp)
    if length is not None and length != n:
        raise AnswerError(f"Content-Length {length} for a range of {n} bytes")
    buf = None
    if into is None:
        buf = bytearray(n)
        into = [memoryview(buf)]
    views = iter(into)
    dest, pos, got = next(views, memoryview(b"")), 0, 0
    async for chunk in resp.content.iter_any():
        if got + len(chunk) > n:
            raise AnswerError(f"the answer runs past the {n} bytes asked for")
        got += len(chunk)
        at = 0
        while at < len(chunk):
            while pos >= len(dest):
                dest, pos = next(views), 0
            take = min(len(dest) - pos, len(chunk) - at)
            dest[pos : pos + take] = chunk[at : at + take]
            pos += take
            at += take
    if got < n:
        raise AnswerError(f"the answer was cut short: {got} of {n} bytes", transient=True)
    return buf


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytearray:
    """The body, refused if it would exceed ``cap`` bytes (before reading, if declared)."""
    length = declared_length(resp)
    if length is not None and length > cap:
        raise AnswerError(
            f"Content-Length {length} where at most {cap} bytes can answer the request"
        )
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        if len(buf) > cap:
            raise AnswerError(f"the answer runs past the {cap} bytes that can answer the request")
    if length is not None and len(buf) != length:
        raise AnswerError(f"the answer was cut short: {len(buf)} of {length} bytes", transient=True)
    return buf


async def read_prefix(resp: aiohttp.ClientResponse, n: int) -> bytes:
    """At most the first ``n`` bytes of the body (the rest is left unread)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = await resp.content.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def classify(exc: BaseException) -> tuple[str, bool]:
    """A one-line reason for a failed attempt, and whether another attempt may succeed."""
    if isinstance(exc, AnswerError):
        return str(exc), exc.transient
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return (
            f"TLS certificate not trusted ({exc.certificate_error}); if this is a private "
            "mirror, trust its CA with ca_file or SSL_CERT_FILE",
            False,
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS failed: {_first_line(exc)}", False
    if isinstance(exc, aiohttp.ClientResponseError):
        # aiohttp could not parse the answer (status line, header block, chunking).
        return f"malformed HTTP answer: {exc.message or type(exc).__name__}", False
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        return f"the answer was cut short: {_first_line(exc)}", True
    if isinstance(exc, (aiohttp.ClientConnectionError, ConnectionError)):
        return f"connection failed: {_first_line(exc)}", True
    if isinstance(exc, TimeoutError):
        return "timed out", True
    if isinstance(exc, aiohttp.ClientError):
        return f"{type(exc).__name__}: {_first_line(exc)}", True
    return f"{type(exc).__name__}: {_first_line(exc)}", False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


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
    except (RuntimeError, OSError):  # "Event loop is closed", a socket already gone
        log.debug("could not close an HTTP client of a closed loop", exc_info=True)
    closing.close()


@atexit.register
def _close_all() -> None:
    """Close every client on its own loop before the loop's exit hook stops it."""
    with _LOCK:
        clients = list(_SESSIONS.items())
        _SESSIONS.clear()
    for (owner, _public_only), client in clients:
        if owner.is_running():
            future = asyncio.run_coroutine_threadsafe(client.close(), owner)
            with contextlib.suppress(Exception):
                future.result(timeout=1.0)
        elif not owner.is_closed():
            with contextlib.suppress(Exception):
                owner.run_until_complete(client.close())
        else:
            _drop(client)


__all__ = [
    "USER_AGENT",
    "AnswerError",
    "RedirectRefusedError",
    "answer",
    "classify",
    "read_capped",
    "read_exact",
    "read_prefix",
    "session",
    "ssl_context",
]
