"""How the viewer defends itself: size limits on the real grid, Host checks, a heavy-work queue.

Every request to the viewer is untrusted (docs/security.md, "Viewer"):

- a box's size is the grid the region reader would build for it
  (:func:`~tessera_vz.reader.grids.grid_for_bbox`), computed before any read;
  an estimate from the lon/lat box is 15x to 1,000x too small for a long thin
  box far from its zone's central meridian, whose grid is a tilted band;
- bound to loopback, only requests naming a loopback host (or the ``--host``
  given) are answered, so a page on another site whose name was rebound to
  127.0.0.1 (DNS rebinding) cannot drive it;
- previews and downloads run on their own few threads behind a bounded
  queue (:class:`HeavyQueue`); Starlette's thread pool, which the light
  requests (``/api/info``, ``/api/point``, static files) run on, is never
  held by heavy work waiting for its turn.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tessera_vz.core.coords import BBox
from tessera_vz.reader.grids import grid_for_bbox

log = logging.getLogger(__name__)

#: Host names that reach a loopback-bound server without DNS.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Limits:
    """How much one request may ask for; larger requests get a 413.

    Attributes
    ----------
    preview_pixels
        Pixels of a preview's output grid (2,000,000 = 14 x 14 km of 10 m,
        256 MB of int8 read).
    region_pixels
        Pixels of a download's output grid (float32: 512 bytes per pixel written).
    features
        Tile cells (or gaps) in one ``/api/tiles`` answer; the page then
        asks for the tiles of its view only.
    years
        Years in one time-series request.
    heavy_requests
        Previews and downloads computed at the same time, each on its own thread.
    heavy_queue
        Heavy requests that may wait for a turn; more get a 503 with ``Retry-After``.
    heavy_wait
        Seconds a heavy request waits for its turn before a 503.
    """

    preview_pixels: int = 2_000_000
    region_pixels: int = 1_000_000
    features: int = 50_000
    years: int = 50
    heavy_requests: int = 2
    heavy_queue: int = 16
    heavy_wait: float = 60.0


class ApiError(Exception):
    """A request the API refuses: HTTP status, a one-line message and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def check_size(bbox: BBox, limit: int, what: str) -> tuple[int, int]:
    """The ``(height, width)`` of the box's output grid, or a 413 when over ``limit`` pixels.

    The grid is the one ``store.region(bbox, year)`` builds (the 10 m lattice
    of the UTM zone of the box centre), computed without reading anything.
    """
    grid, _ = grid_for_bbox(bbox)
    if grid.size > limit:
        side = math.sqrt(limit) * 10 / 1000
        raise ApiError(
            413,
            f"the {what} box is a grid of {grid.height:,} x {grid.width:,} = {grid.size:,} "
            f"pixels of 10 m, over the limit of {limit:,} (about {side:.0f} x {side:.0f} km "
            "near the zone's central meridian); draw a smaller box",
        )
    return grid.height, grid.width


# -- Host ---------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether a bind address only reaches this machine (``127.0.0.0/8``, ``::1``, localhost)."""
    import ipaddress

    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind: str) -> frozenset[str] | None:
    """Host names a server bound to ``bind`` answers, or ``None`` (any) when not loopback."""
    if not is_loopback(bind):
        return None
    names = {*LOOPBACK_NAMES, bind.strip("[]").lower()}
    return frozenset(names)


def host_name(header: str) -> str | None:
    """The name in a ``Host`` header without its port (``[::1]:80`` -> ``::1``), or None."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :] if end > 0 else ":bad"
        if rest and not _port(rest):
            return None
        return value[1:end]
    name, sep, port = value.partition(":")
    if sep and not _port(":" + port):
        return None
    return name or None


def _port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit() and len(text) <= 6


class HostCheck:
    """ASGI middleware: a 400 for requests whose ``Host`` is not one of ``hosts``.

    Requests without a ``Host`` (HTTP/1.0) are refused too: a browser always sends one.
    """

    def __init__(self, app: Any, hosts: Iterable[str] | None) -> None:
        self.app = app
        self.hosts = frozenset(hosts) if hosts is not None else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.hosts is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        name = host_name(header)
        if name in self.hosts:
            await self.app(scope, receive, send)
            return
        log.warning("refused a request for Host %r (DNS rebinding?)", header[:100])
        body = json.dumps(
            {"error": "this viewer answers only requests for localhost, 127.0.0.1 or [::1]"}
        ).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


# -- heavy work ---------------------------------------------------------------


class HeavyQueue:
    """A few threads of heavy work and a bounded queue in front of them.

    A heavy request waits as a coroutine (holding no thread) for one of
    ``slots`` turns; at most ``queue`` wait, for at most ``wait`` seconds;
    beyond that it is refused with a 503 and ``Retry-After``. The work itself
    runs on this queue's own executor, never on Starlette's thread pool.
    """

    def __init__(self, slots: int, queue: int, wait: float) -> None:
        self.slots = max(1, slots)
        self.queue = max(0, queue)
        self.wait = wait
        self.waiting = 0
        self._turns: asyncio.Semaphore | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(self.slots, "tessera-vz-heavy")

    async def run[T](self, fn: Callable[[], T]) -> T:
        """``fn()`` on a heavy thread once a turn is free; a 503 when the queue is full."""
        if self._turns is None:  # created on the server's loop
            self._turns = asyncio.Semaphore(self.slots)
        turns = self._turns
        if turns.locked():
            if self.waiting >= self.queue:
                raise _busy(f"{self.slots + self.waiting} heavy requests in progress or waiting")
            self.waiting += 1
            try:
                await asyncio.wait_for(turns.acquire(), self.wait)
            except TimeoutError:
                raise _busy(f"no turn for a heavy request within {self.wait:g} s") from None
            finally:
                self.waiting -= 1
        else:
            await turns.acquire()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)
        finally:
            turns.release()

    def close(self) -> None:
        """Stop the heavy threads (work in progress finishes)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _busy(why: str) -> ApiError:
    return ApiError(503, f"the viewer is busy ({why}); try again shortly", {"Retry-After": "5"})
