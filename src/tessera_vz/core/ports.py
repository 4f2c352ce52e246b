"""Loopback ports for the servers this project starts (nginx mirrors, moto, the viewer).

A port the kernel hands out for ``bind(("127.0.0.1", 0))`` may be one a
server of a moment ago listened on. Clients keep idle connections in pools
keyed by host and port (aiohttp's, and the one inside Icechunk's virtual
chunk fetcher), so a new server on an old server's port can meet a pooled
connection the old one closed: the first request on it fails with
"connection closed before message completed", and no retry follows. Ports
are therefore never handed out twice in one process.
"""

from __future__ import annotations

import socket
import threading

_given: set[tuple[str, int]] = set()
_lock = threading.Lock()


def fresh_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now and not returned before by this process.

    The caller binds it next; a server that loses the race to another
    process should ask again (:class:`~tessera_vz.mirror.nginx.NginxServer`
    does).
    """
    with _lock:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = int(s.getsockname()[1])
            if (host, port) not in _given:
                _given.add((host, port))
                return port
    raise OSError(f"no fresh port on {host}: the kernel kept offering ports already used")
