"""A published index's repository objects, fetched under the same policy as tiles.

Icechunk's read-only HTTP storage (``ic.http_storage``) is an object_store
client with none of the boundary's limits: a server that stalls hung
``info --timeout 2 --retries 0`` past 150 s, an 8 GiB ``Content-Length`` grew
the process to 4.4 GB, redirects were followed to any origin, and every
request carried ``//`` after the repository root. Its options bound
timeouts at best; no size cap, no redirect control, no way to join paths
differently.

So Icechunk never talks to the publishing server. It talks to a small HTTP
server of ours on ``127.0.0.1`` (one per process, on its own thread and
event loop, so a blocking Icechunk call on any other thread cannot starve
it), which answers each ``GET`` by fetching the object through
:class:`~tessera_vz.core.boundary.SourceFiles`: the reader's per-request
timeout and retries, at most :data:`MAX_REPOSITORY_OBJECT` bytes, redirects
only below the repository's own root, exactly one slash
(:func:`~tessera_vz.core.urls.join`), ``Content-Range`` checked. Paths are
served under a random token, each repository under its own number: the
proxy reads nothing but the repositories this process opened. A failure
is answered ``400`` (a status Icechunk does not retry: our own retries were
spent), and remembered, so the caller can raise our error instead of
Icechunk's (:meth:`RepositoryProxy.failure`).

Round trips are what a cold read over a slow link pays for, so the proxy
saves the ones Icechunk would make for nothing. Icechunk fetches the
repository's info object (``repo``: branches, tags, config) again for every
call (open, list branches, look one up, open a session): each repository
handle keeps the first one it fetched, so one store reads one state of the
index. And every open probes for a version-1 repository (``config.yaml``,
``refs/branch.main/ref.json``) beside the ``repo`` object, ignoring both
when ``repo`` exists: those are answered ``404`` here, without a request,
once ``repo`` is known to exist (which is what Icechunk concludes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Buffer, Iterator
from dataclasses import replace
from urllib.parse import urlsplit

import icechunk as ic
from aiohttp import web

from tessera_vz.core import object_cache
from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.errors import SourceNotFoundError, TesseraError
from tessera_vz.core.options import ReadOptions
from tessera_vz.core.urls import check_path, join

log = logging.getLogger(__name__)

#: The largest repository object (snapshot, manifest, transaction log) read.
MAX_REPOSITORY_OBJECT = 256 << 20
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)\Z")
#: Folders of a repository whose objects never change once written (content-named).
_IMMUTABLE = frozenset({"snapshots", "manifests", "transactions", "chunks"})
#: Bytes of immutable objects kept for later ranges of the same object.
_CACHE_BYTES = 64 << 20
#: The repository info object (Icechunk's spec version 2 and later).
_INFO = "repo"


def _version_one_probe(path: str) -> bool:
    """Whether ``path`` is an object of a version-1 repository, which Icechunk probes for."""
    return path == "config.yaml" or path.startswith("refs/")


class RepositoryProxy:
    """The loopback server Icechunk reads published repositories through.

    State is real (the thread, its loop and server, the repositories
    served and their last failures), hence a class; one per process
    (:func:`proxy`).
    """

    def __init__(self) -> None:
        self._token = secrets.token_urlsafe(16)
        self._bases: list[tuple[str, SourceFiles]] = []
        self._failures: dict[str, TesseraError] = {}
        self._cache: dict[str, bytes] = {}
        #: Bytes held in ``_cache`` (kept as it changes: summing it per object was quadratic).
        self._cached_bytes = 0
        #: Handle -> its repository info object, fetched once (see the module).
        self._infos: dict[int, asyncio.Future[bytes]] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._port = 0
        threading.Thread(target=self._run, name="tessera-vz-repo-proxy", daemon=True).start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("GET", "/{token}/{n}/{path:.*}", self._serve)
        app.router.add_route("HEAD", "/{token}/{n}/{path:.*}", self._serve)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self._port = runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()

    def url_for(self, base: str, options: ReadOptions) -> str:
        """The loopback URL Icechunk opens for the repository published at ``base``."""
        base = base.rstrip("/") + "/"
        # The user named this URL: it may be on their own network.
        files = SourceFiles([base], replace(options, allow_private_sources=True))
        with self._lock:
            self._bases.append((base, files))
            n = len(self._bases) - 1
        return f"http://127.0.0.1:{self._port}/{self._token}/{n}/"

    def fetch_beside(self, base: str, paths: list[str], limit: int) -> list[bytes | None]:
        """Objects at ``paths`` below a repository this proxy serves, fetched together.

        Through the repository's own boundary (its connection is open
        already: the ``repo`` object came through it), each at most
        ``limit`` bytes; ``None`` where the server has no such object.
        Every object found is kept on disk (:mod:`~tessera_vz.core.object_cache`)
        for the next process, so ask only for immutable ones: paths holding a
        snapshot id, as the table blocks' do.
        """
        base = base.rstrip("/") + "/"
        with self._lock:
            files = next((f for b, f in reversed(self._bases) if b == base), None)
        if files is None:
            raise LookupError(f"{base} is not a repository this process opened")

        async def one(path: str) -> bytes | None:
            url = join(base, check_path(path))
            found = object_cache.load(url)
            if found is not None:
                return found
            try:
                data = bytes(await files.fetch(url, "reading the published index", limit))
            except SourceNotFoundError:
                return None
            object_cache.save_soon(url, data)
            return data

        async def every() -> list[bytes | None]:
            return list(await asyncio.gather(*(one(p) for p in paths)))

        return asyncio.run_coroutine_threadsafe(every(), self._loop).result()

    def failure(self, base: str) -> TesseraError | None:
        """The last failure while serving the repository published at ``base``, if any."""
        return self._failures.get(base.rstrip("/") + "/")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["token"] != self._token:
            return web.Response(status=404)
        try:
            n = int(request.match_info["n"])
            base, files = self._bases[n]
            # Icechunk joins with "//": the object's path is what follows the slashes.
            path = check_path(request.match_info["path"].lstrip("/"))
        except (ValueError, IndexError) as exc:
            return web.Response(status=404, text=str(exc))
        url = join(base, path)
        purpose = "reading the published repository"
        try:
            if path == _INFO:
                info = await self._info(n, files, url)
                data, start, total = _cut(info, url, request.headers.get("Range"))
            elif _version_one_probe(path) and await self._has_info(n, files, join(base, _INFO)):
                return web.Response(status=404)  # a version-2 repository: Icechunk ignores it
            else:
                data, start, total = await self._fetch(files, url, request.headers.get("Range"))
        except SourceNotFoundError:
            return web.Response(status=404)  # Icechunk asks for optional objects too
        except (TesseraError, ValueError) as exc:
            error = exc if isinstance(exc, TesseraError) else TesseraError(str(exc))
            self._failures[base] = error
            log.info("%s: %s", purpose, error)
            return web.Response(status=400, text=str(error))
        headers = {"Accept-Ranges": "bytes"}
        status = 200
        if start is not None:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + len(memoryview(data)) - 1}/{total}"
        body = b"" if request.method == "HEAD" else bytes(data)
        return web.Response(status=status, body=body, headers=headers)

    async def _info(self, n: int, files: SourceFiles, url: str) -> bytes:
        """Handle ``n``'s repository info object: fetched once, every later ask shares it.

        Concurrent asks (Icechunk's version probes and the info itself)
        wait for the one fetch. A failure is not kept (the next ask fetches
        again), but "not found" is: a version-1 repository has no info object.
        """
        pending = self._infos.get(n)
        if pending is None:
            purpose = "reading the published repository"
            pending = asyncio.ensure_future(files.fetch(url, purpose, MAX_REPOSITORY_OBJECT))
            self._infos[n] = pending
        try:
            return bytes(await asyncio.shield(pending))
        except SourceNotFoundError:
            raise
        except BaseException:
            if self._infos.get(n) is pending:
                del self._infos[n]
            raise

    async def _has_info(self, n: int, files: SourceFiles, url: str) -> bool:
        """Whether handle ``n``'s repository has an info object (is of version 2 or later)."""
        try:
            await self._info(n, files, url)
        except SourceNotFoundError:
            return False
        return True

    async def _fetch(
        self, files: SourceFiles, url: str, ranged: str | None
    ) -> tuple[Buffer, int | None, int]:
        """The object (or the range asked), where the range starts, and the object's size.

        Objects are fetched whole (at most :data:`MAX_REPOSITORY_OBJECT`
        bytes) and ranges cut from them: every answer then knows the size
        ``Content-Range`` names. Immutable objects (everything but ``repo``
        and refs) are kept in a small cache for the next range, and on disk
        (:mod:`~tessera_vz.core.object_cache`) for the next process.
        """
        immutable = url.rsplit("/", 2)[-2] in _IMMUTABLE
        whole = self._cache.get(url)
        if whole is None and immutable:
            whole = object_cache.load(url)
        if whole is None:
            whole = bytes(
                await files.fetch(url, "reading the published repository", MAX_REPOSITORY_OBJECT)
            )
            if immutable:
                object_cache.save_soon(url, whole)
        if immutable:
            self._remember(url, whole)
        return _cut(whole, url, ranged)

    def _remember(self, url: str, data: bytes) -> None:
        self._cached_bytes += len(data) - len(self._cache.pop(url, b""))
        self._cache[url] = data
        while self._cached_bytes > _CACHE_BYTES and len(self._cache) > 1:
            self._cached_bytes -= len(self._cache.pop(next(iter(self._cache))))


def _cut(whole: bytes, url: str, ranged: str | None) -> tuple[Buffer, int | None, int]:
    """The range ``ranged`` asks of an object (all of it without one), its start and the size."""
    m = _RANGE.match(ranged.strip()) if ranged else None
    if m is None:
        return whole, None, len(whole)
    start = int(m.group(1))
    end = min(int(m.group(2)) + 1 if m.group(2) else len(whole), len(whole))
    if start >= len(whole) or end <= start:
        raise ValueError(f"{url}: range {ranged!r} outside an object of {len(whole)} bytes")
    return memoryview(whole)[start:end], start, len(whole)


_PROXY: RepositoryProxy | None = None
_PROXY_LOCK = threading.Lock()


@contextlib.contextmanager
def published_errors(location: str) -> Iterator[None]:
    """Raise our error (what the boundary saw) instead of Icechunk's for a published repo."""
    try:
        yield
    except ic.IcechunkError:
        seen = _PROXY.failure(location) if _PROXY is not None else None
        if seen is None or urlsplit(location).scheme not in ("http", "https"):
            raise
        raise seen from None


def _forget_after_fork() -> None:
    """A forked child has no proxy thread: it starts its own on first use."""
    global _PROXY, _PROXY_LOCK
    _PROXY, _PROXY_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def proxy() -> RepositoryProxy:
    """The process's repository proxy (started on first use)."""
    global _PROXY
    with _PROXY_LOCK:
        if _PROXY is None:
            _PROXY = RepositoryProxy()
        return _PROXY


__all__ = ["MAX_REPOSITORY_OBJECT", "RepositoryProxy", "proxy", "published_errors"]
