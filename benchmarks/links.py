"""The two links the read benchmark measures on, and the bytes that crossed them.

Every read figure is reported on two links to the same TLS nginx:

* ``loopback``: the client talks to nginx directly over ``https://127.0.0.1``;
* ``+20 ms``: a :class:`~tessera_vz.testing.latency.LatencyProxy` adding 10 ms
  each way (20 ms per round trip, TCP and TLS handshakes included) sits in
  front of the same nginx; TLS passes through it untouched.

The proxy runs in a child process: in the reader's own process its event
loop would compete with the reader (and zarr's loop, and aiohttp) for the
GIL, and the benchmark would measure that contention instead of the link.

Bytes on the wire come from two places: nginx's access log (``$bytes_sent``:
status line, headers and body of each answer, before TLS) for the requests
under a path prefix, and the proxy's counters (TCP payload in both
directions, so requests, TLS records and handshakes included), which exist
only on the +20 ms link.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass

from tessera_vz.testing.child import ChildServer
from tessera_vz.testing.nginx import NginxServer

#: The child: run the proxy, print its URL, answer ``stats``/``reset`` lines on stdin.
_CHILD = """
import dataclasses, json, sys
from tessera_vz.testing.latency import LatencyProxy
with LatencyProxy(sys.argv[1], delay=float(sys.argv[2])) as proxy:
    print(proxy.url, flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            print(json.dumps(dataclasses.asdict(proxy.stats())), flush=True)
        elif line.strip() == "reset":
            proxy.reset_stats()
            print("{}", flush=True)
        else:
            break
"""


class ProxyProcess(ChildServer):
    """A :class:`LatencyProxy` in a child process, driven over its stdin and stdout.

    A child started with ``python -c`` rather than ``multiprocessing``, so
    it imports only the proxy (not the benchmark script again).

    Parameters
    ----------
    upstream
        ``https://127.0.0.1:PORT/`` of the server to delay.
    delay
        One-way delay in seconds (0.010: 20 ms per round trip).
    """

    def __init__(self, upstream: str, delay: float = 0.010) -> None:
        super().__init__([sys.executable, "-c", _CHILD, upstream, str(delay)], "latency proxy")
        self.upstream = upstream
        self.delay = delay

    def stats(self) -> dict[str, int]:
        """``bytes_up``, ``bytes_down``, ``connections``, ... since the last reset."""
        return dict(self.ask("stats"))

    def reset(self) -> None:
        self.ask("reset")

    def errors(self) -> list[str]:
        """The last line of each traceback the child logged (e.g. by asyncio callbacks)."""
        lines = self.stderr().splitlines()
        return [b for a, b in itertools.pairwise(lines) if a.startswith("  ") and
                b and not b.startswith((" ", "Traceback"))]  # fmt: skip


@dataclass
class Traffic:
    """What one measured read moved.

    ``requests`` and ``sent`` (nginx's ``$bytes_sent``: answer headers and
    bodies before TLS) count the requests under the prefix asked for;
    ``up``/``down`` are the proxy's TCP payload counts in each direction
    (requests, answers, TLS framing and handshakes), ``None`` on loopback.
    """

    requests: int
    sent: int
    up: int | None = None
    down: int | None = None
    connections: int | None = None

    @property
    def both(self) -> int | None:
        """Bytes through the proxy in both directions (``None`` on loopback)."""
        return None if self.up is None or self.down is None else self.up + self.down


@dataclass
class Link:
    """One way to reach the benchmark's nginx: its base URL and its byte counters."""

    name: str
    url: str
    server: NginxServer
    proxy: ProxyProcess | None = None

    def start(self) -> None:
        """Forget what was counted so far (call just before a measured read)."""
        self.server.clear_log()
        if self.proxy is not None:
            self.proxy.reset()

    def count(self, prefix: str, expect: int = 0) -> Traffic:
        """Requests and bytes since :meth:`start` for URIs under ``prefix`` (e.g. ``/tiles/``).

        ``expect`` waits (briefly) for that many log lines: nginx writes a
        line just after the answer, so a client may see its answer first.
        """
        logged = self.server.requests(min_count=expect)
        # Wait until the log stops growing: the last answer's line may trail it.
        for _ in range(50):
            time.sleep(0.02)
            again = self.server.requests()
            if len(again) == len(logged):
                break
            logged = again
        mine = [r for r in logged if r["uri"].startswith(prefix)]
        traffic = Traffic(len(mine), sum(int(r["bytes_sent"]) for r in mine))
        if self.proxy is not None:
            st = self.proxy.stats()
            traffic.up, traffic.down = st["bytes_up"], st["bytes_down"]
            traffic.connections = st["connections"]
        return traffic
