"""The latency proxy adds its delay, streams bodies, carries TLS, and counts bytes.

Benchmarks report read figures "over HTTPS with 20 ms added per request";
those figures are only honest if the proxy adds exactly that (not less, and
not a buffering delay proportional to the body) and if its byte counters
are the bytes on the wire.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tessera_vz.testing.latency import DEFAULT_WINDOW, READ_SIZE, LatencyProxy
from tessera_vz.testing.liar import LiarServer
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tls import TestCA, client_context

from .conftest import serve_tls

BIG = 50_000_000
SMALL = "small.bin"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("latency-tree")
    (root / SMALL).write_bytes(os.urandom(100_000))
    (root / "big.bin").write_bytes(os.urandom(BIG))
    return root


@pytest.fixture(scope="module")
def nginx(tree: Path) -> Iterator[NginxServer]:
    with NginxServer(tree) as server:
        yield server


def _timed_gets(port: int, n: int, *, rng: str = "bytes=0-131") -> list[float]:
    """Seconds per ranged GET on one kept-alive connection, after one warm-up request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        conn.request("GET", "/" + SMALL, headers={"Range": rng})
        resp = conn.getresponse()
        resp.read()
        if i:
            times.append(time.perf_counter() - t0)
    conn.close()
    return times


def test_warm_request_costs_two_delays_more(nginx: NginxServer) -> None:
    with LatencyProxy(nginx.url, delay=0.010) as proxy:
        direct = _timed_gets(nginx.port, 10)
        proxied = _timed_gets(proxy.port, 10)
    # Every proxied round trip pays 10 ms each way; none may pay less.
    assert min(proxied) >= 0.020
    assert min(proxied) - min(direct) >= 0.019
    # ... and not a whole extra delay more (generous: the machine is shared).
    assert sorted(proxied)[len(proxied) // 2] < 0.020 + 0.050


def test_cold_connection_pays_the_tcp_handshake(nginx: NginxServer) -> None:
    """A new connection's first exchange costs one more round trip (SYN/SYN-ACK)."""
    with LatencyProxy(nginx.url, delay=0.010) as proxy:
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(b"GET /small.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 206")
        assert time.perf_counter() - t0 >= 0.040
    with LatencyProxy(nginx.url, delay=0.010, tcp_handshake=False) as proxy:
        assert min(_timed_gets(proxy.port, 3)) >= 0.020


@pytest.mark.parametrize("window", [None, 1 << 20])
def test_large_body_streams(tree: Path, nginx: NginxServer, window: int | None) -> None:
    """50 MB flow through at loopback speed, never held whole by the proxy.

    ``peak_buffered`` is the most the proxy ever held for the body: a proxy
    that waited for whole bodies would hold all 50 MB; this one holds what
    arrives within one delay, and no more than its window.
    """
    with LatencyProxy(nginx.url, window=window or DEFAULT_WINDOW) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
        conn.request("GET", "/big.bin", headers={"Range": "bytes=0-0"})
        conn.getresponse().read()  # warm the connection
        t0 = time.perf_counter()
        conn.request("GET", "/big.bin")
        resp = conn.getresponse()
        first = resp.read(65536)
        t_first = time.perf_counter() - t0
        n = len(first)
        while chunk := resp.read(1 << 20):
            n += len(chunk)
        total = time.perf_counter() - t0
        conn.close()
        stats = proxy.stats()
    assert n == BIG
    throughput = BIG / total / 1e6
    print(
        f"\nlatency proxy (window {window or 'default'}): 50 MB in {total * 1000:.0f} ms, "
        f"first 64 KiB after {t_first * 1000:.1f} ms, {throughput:.0f} MB/s, "
        f"peak held {stats.peak_buffered / 1e6:.1f} MB"
    )
    assert stats.peak_buffered <= (window or DEFAULT_WINDOW) + READ_SIZE < BIG / 2
    # Measured 350-900 MB/s on loopback; the floor only catches a proxy that stalls.
    assert throughput >= 50
    assert stats.bytes_down > BIG


def test_a_slow_body_is_forwarded_as_it_comes(tree: Path) -> None:
    """Bytes the upstream trickles out reach the client one delay later, not at the end."""
    with (
        LiarServer(tree, "trickle", piece=20_000, interval=0.4) as liar,
        LatencyProxy(liar.url) as proxy,
    ):
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        t0 = time.perf_counter()
        conn.request("GET", "/" + SMALL, headers={"Range": "bytes=0-59999"})
        resp = conn.getresponse()
        first = resp.read(20_000)
        t_first = time.perf_counter() - t0
        rest = resp.read()
        total = time.perf_counter() - t0
        conn.close()
    assert len(first) + len(rest) == 60_000
    # The upstream sends its last piece 0.8 s in; the first arrives after ~0.04 s.
    assert total >= 0.8
    assert t_first < 0.4


def test_tls_passes_through(tree: Path, test_ca: TestCA) -> None:
    server = serve_tls(tree, test_ca)
    try:
        with LatencyProxy(server.url) as proxy:
            assert proxy.url.startswith("https://127.0.0.1:")
            conn = http.client.HTTPSConnection(
                "127.0.0.1", proxy.port, timeout=10, context=client_context(test_ca)
            )
            conn.request("GET", "/" + SMALL, headers={"Range": "bytes=10-19"})
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (206, (tree / SMALL).read_bytes()[10:20])
            conn.close()
            stats = proxy.stats()
        logged = server.requests(min_count=1)
        # TLS records and the handshake ride on top of nginx's own count.
        assert stats.bytes_down > sum(r["bytes_sent"] for r in logged)
    finally:
        server.stop()


def test_counters_match_nginx(nginx: NginxServer) -> None:
    nginx.clear_log()
    with LatencyProxy(nginx.url, delay=0.001) as proxy:
        for _ in range(2):  # two connections, three requests each
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            for rng in ("bytes=0-99", "bytes=0-9,50-59", "bytes=5000-"):
                conn.request("GET", "/" + SMALL, headers={"Range": rng})
                conn.getresponse().read()
            conn.close()
        logged = nginx.requests(min_count=6)
        time.sleep(0.1)  # let the proxy see both closes
        stats = proxy.stats()
        proxy.reset_stats()
        assert proxy.stats().bytes_down == 0
    assert len(logged) == 6
    assert stats.bytes_down == sum(r["bytes_sent"] for r in logged)
    assert stats.connections == len({r["connection"] for r in logged}) == 2
    assert stats.active == 0
    assert stats.bytes_up > 6 * len("GET /small.bin HTTP/1.1\r\n")


def test_reset_is_passed_on(tree: Path) -> None:
    """An upstream RST reaches the client as a reset, not as a clean end of body."""
    with LiarServer(tree, "reset_mid_body") as liar, LatencyProxy(liar.url) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("GET", "/" + SMALL, headers={"Range": "bytes=0-9999"})
        with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
            conn.getresponse().read()
        conn.close()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(b"GET /small.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99\r\n\r\n")
            with pytest.raises(ConnectionResetError):
                while sock.recv(65536):
                    pass


def test_many_concurrent_connections(nginx: NginxServer, tree: Path) -> None:
    data = (tree / SMALL).read_bytes()

    def one(i: int) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        conn.request("GET", "/" + SMALL, headers={"Range": f"bytes={i}-{i + 99}"})
        body = conn.getresponse().read()
        conn.close()
        return body

    with (
        LatencyProxy(nginx.url) as proxy,
        concurrent.futures.ThreadPoolExecutor(128) as pool,
    ):
        bodies = list(pool.map(one, range(256)))
    assert bodies == [data[i : i + 100] for i in range(256)]
    assert proxy.stats().connections == 256


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="http"):
        LatencyProxy("s3://bucket/")
    with pytest.raises(ValueError, match="delay"):
        LatencyProxy("http://127.0.0.1:1/", delay=-1)
