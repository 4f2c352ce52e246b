"""The in-place HTTP receiver against real servers: nginx and the fault proxy.

Windows are received straight into their rows by
:mod:`tessera_vz.reader.receive`; these tests hold it to what a ranged read
needs: the bytes of the range land in the caller's views in order, kept-alive
connections are reused and a connection the server dropped while idle is
replaced, an answer the caller does not read never leaves bytes behind for
the next request, and a broken answer is an error, never a short read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from tessera_vz.reader import receive
from tessera_vz.reader.receive import Head, ReceiveError, parse_head

from tessera_vz.testing.faults import Fault, FaultProxy
from tessera_vz.testing.nginx import NginxServer

SIZE = 3_000_000


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    root = tmp_path_factory.mktemp("receive")
    data = np.random.default_rng(0).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    (root / "blob.bin").write_bytes(data)
    return root, data


@pytest.fixture(scope="module")
def nginx(blob: tuple[Path, bytes]) -> Iterator[NginxServer]:
    with NginxServer(blob[0]) as server:
        yield server


def _views(sizes: Sequence[int]) -> tuple[bytearray, list[memoryview]]:
    """One buffer cut into consecutive views of ``sizes`` bytes."""
    buf = bytearray(sum(sizes))
    views, at = [], 0
    for n in sizes:
        views.append(memoryview(buf)[at : at + n])
        at += n
    return buf, views


def _ranged(start: int, end: int) -> dict[str, str]:
    return {"Range": f"bytes={start}-{end - 1}"}


def test_a_range_lands_in_its_views_in_order(nginx: NginxServer, blob: tuple[Path, bytes]) -> None:
    """Hundreds of views of uneven sizes (rows and the gaps between them) get the
    range's bytes in order, and the next request reuses the connection."""
    _, data = blob
    sizes = np.random.default_rng(1).integers(1, 9_000, 300).tolist()
    start = 12_345
    end = start + sum(sizes)

    async def read() -> tuple[bytearray, bytearray]:
        first, views = _views(sizes)
        head = await receive.get(nginx.url + "blob.bin", _ranged(start, end), lambda h: views, 5)
        assert head.status == 206
        second, more = _views([1000])
        await receive.get(nginx.url + "blob.bin", _ranged(0, 1000), lambda h: more, 5)
        return first, second

    first, second = asyncio.run(read())
    assert bytes(first) == data[start:end]
    assert bytes(second) == data[:1000]
    logged = [r for r in nginx.requests(min_count=2) if r["uri"] == "/blob.bin"][-2:]
    assert logged[1]["connection"] == logged[0]["connection"], logged


def test_an_unread_answer_closes_its_connection(
    nginx: NginxServer, blob: tuple[Path, bytes]
) -> None:
    """A whole-file 200 or a 404 is left unread: its connection closes, and the
    next request on a fresh one gets exactly its own bytes."""
    _, data = blob

    async def read() -> tuple[Head, Head, bytearray]:
        whole = await receive.get(nginx.url + "blob.bin", {}, lambda h: None, 5)
        gone = await receive.get(nginx.url + "missing.bin", _ranged(0, 10), lambda h: None, 5)
        buf, views = _views([4096])
        await receive.get(nginx.url + "blob.bin", _ranged(100, 4196), lambda h: views, 5)
        return whole, gone, buf

    whole, gone, buf = asyncio.run(read())
    assert (whole.status, gone.status) == (200, 404)
    assert whole.headers["content-length"] == str(SIZE)
    assert bytes(buf) == data[100:4196]


def test_a_connection_dropped_while_idle_is_replaced(blob: tuple[Path, bytes]) -> None:
    """A kept-alive connection whose server went away fails before any answer;
    the request is sent again on a new connection, not failed."""
    root, data = blob

    async def read(url: str, start: int) -> bytes:
        buf, views = _views([5000])
        await receive.get(url + "blob.bin", _ranged(start, start + 5000), lambda h: views, 5)
        return bytes(buf)

    async def both() -> tuple[bytes, bytes]:
        with NginxServer(root) as first:
            port = first.port
            one = await read(first.url, 0)
        with NginxServer(root, port=port) as again:  # same origin, new process
            two = await read(again.url, 7000)
        return one, two

    one, two = asyncio.run(both())
    assert one == data[:5000] and two == data[7000:12000]


def test_a_body_other_than_the_views_is_an_error(nginx: NginxServer) -> None:
    """Views that do not add up to the Content-Length are refused before any
    byte lands."""

    async def read() -> None:
        _, views = _views([100])
        await receive.get(nginx.url + "blob.bin", _ranged(0, 200), lambda h: views, 5)

    with pytest.raises(ReceiveError, match="Content-Length 200, expected 100"):
        asyncio.run(read())


@pytest.mark.parametrize("kind", ["short", "reset"])
def test_a_cut_answer_is_an_error_not_a_short_read(
    nginx: NginxServer, blob: tuple[Path, bytes], kind: str
) -> None:
    with FaultProxy(nginx.url, [Fault(kind, path="blob")]) as proxy:  # type: ignore[arg-type]

        async def read() -> None:
            _, views = _views([200_000])
            await receive.get(proxy.url + "blob.bin", _ranged(0, 200_000), lambda h: views, 5)

        with pytest.raises(ReceiveError):
            asyncio.run(read())


def test_a_stalled_answer_times_out(nginx: NginxServer) -> None:
    with FaultProxy(nginx.url, [Fault("stall", path="blob", seconds=30)]) as proxy:

        async def read() -> None:
            _, views = _views([1000])
            await receive.get(proxy.url + "blob.bin", _ranged(0, 1000), lambda h: views, 0.5)

        with pytest.raises(TimeoutError):
            asyncio.run(read())


def test_parse_head_reads_status_and_joins_repeated_headers() -> None:
    head = parse_head(b"HTTP/1.1 206 Partial Content\r\nX-A: 1\r\nContent-Length: 5\r\nx-a: 2")
    assert (head.status, head.reason) == (206, "Partial Content")
    assert head.headers == {"x-a": "1, 2", "content-length": "5"}
    for bad in (b"SSH-2.0-OpenSSH", b"HTTP/1.1 abc nope", b"HTTP/1.1 200 OK\r\nno colon"):
        with pytest.raises(ReceiveError):
            parse_head(bad)
