"""The event loop on which synchronous callers run tessera-vz's coroutines.

Point, window and sample reads, header probes and ``verify`` are coroutines
(many ranged requests in flight at once); ``TesseraStore``, the indexer and
dask tasks call them from ordinary code through :func:`sync`. They all run on
one long-lived loop in a daemon thread, never a fresh ``asyncio.run`` loop
per call, because

- connections are pooled per loop (:func:`tessera_vz.core.http.session`):
  a point read a minute after the last one reuses the open TLS connection
  instead of paying two more round trips;
- a caller may already be inside a running loop (Jupyter, an async web
  app), where ``asyncio.run`` refuses to start;
- dask's worker threads call it concurrently: each call is a future on the
  one loop, so they share its connections and its limits.

This replaces zarr's internal ``zarr.core.sync.sync``, which did the same on
zarr's loop but is no public API.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)

#: Seconds the exit hook waits for the loop's thread to stop.
_STOP_WAIT = 0.2

_LOCK = threading.Lock()
_LOOP: asyncio.AbstractEventLoop | None = None
_THREAD: threading.Thread | None = None


def loop() -> asyncio.AbstractEventLoop:
    """The running background loop (started on first use)."""
    global _LOOP, _THREAD
    with _LOCK:
        if _LOOP is None or _LOOP.is_closed():
            _LOOP = asyncio.new_event_loop()
            _THREAD = threading.Thread(target=_LOOP.run_forever, name="tessera-vz-io", daemon=True)
            _THREAD.start()
        return _LOOP


def sync[T](coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and return its result (or raise its error).

    Callable from any thread, including one that runs an event loop of its
    own; not from a coroutine already on the background loop (that would
    wait for itself forever).
    """
    target = loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is target:
        coro.close()
        raise RuntimeError("sync() called from a coroutine on tessera-vz's own loop; await it")
    future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, target)
    return future.result()


@atexit.register
def _stop() -> None:
    """Stop the loop at exit (registered before, so run after, the HTTP clients' hook)."""
    with _LOCK:
        current, thread = _LOOP, _THREAD
    if current is None or current.is_closed():
        return
    current.call_soon_threadsafe(current.stop)
    if thread is not None:
        thread.join(timeout=_STOP_WAIT)
        if thread.is_alive():
            log.debug("tessera-vz's event loop did not stop within %s s", _STOP_WAIT)
            return
    current.close()


def _forget_after_fork() -> None:
    """A forked child has no loop thread: it starts its own on first use."""
    global _LOOP, _THREAD, _LOCK
    _LOOP, _THREAD, _LOCK = None, None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


__all__ = ["loop", "sync"]
