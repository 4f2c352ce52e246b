"""What the throwaway servers of the tests have in common."""

from __future__ import annotations

import socketserver
import threading
from types import TracebackType
from typing import Self


class Service:
    """A server a test starts on loopback: ``with`` starts it and always stops it."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_in_thread(server: socketserver.BaseServer) -> threading.Thread:
    """Run ``server`` in a daemon thread (polling often, so :func:`stop_server` is quick)."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return thread


def stop_server(server: socketserver.BaseServer | None, thread: threading.Thread | None) -> None:
    """Stop a server started by :func:`serve_in_thread` and wait for its thread."""
    if server is not None:
        server.shutdown()
        server.server_close()
    if thread is not None:
        thread.join(timeout=5)
