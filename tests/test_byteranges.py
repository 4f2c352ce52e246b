"""The multi-range format: request header, parts of the answer, ranges cut back out."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import numpy as np
import pytest
from tessera_vz.reader.byteranges import (
    MalformedRangesError,
    boundary_of,
    cut,
    parts,
    range_header,
)
from zarr.core.sync import sync

from tessera_vz.testing.nginx import NginxServer

BOUNDARY = "00000000000000000042"
CTYPE = f"multipart/byteranges; boundary={BOUNDARY}"


def _multipart(data: bytes, spans: list[tuple[int, int]], preamble: bytes = b"\r\n") -> bytes:
    """A multipart/byteranges body for inclusive ``(first, last)`` spans, as RFC 9110 writes it."""
    out = [preamble]
    for i, (a, b) in enumerate(spans):
        if i:
            out.append(b"\r\n")
        out.append(
            f"--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Range: bytes {a}-{b}/{len(data)}\r\n\r\n".encode()
        )
        out.append(data[a : b + 1])
    out.append(f"\r\n--{BOUNDARY}--\r\n".encode())
    return b"".join(out)


DATA = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))


def test_range_header_is_inclusive_and_ordered() -> None:
    assert range_header([0, 100], [10, 228]) == "bytes=0-9,100-227"


def test_parts_and_cut_give_back_every_range() -> None:
    starts, ends = [10, 500, 3000], [138, 628, 3128]
    body = _multipart(DATA, [(s, e - 1) for s, e in zip(starts, ends, strict=True)])
    got = cut(parts(body, CTYPE, None), starts, ends)
    assert [bytes(g) for g in got] == [DATA[s:e] for s, e in zip(starts, ends, strict=True)]


def test_merged_reordered_and_widened_parts_still_serve_each_range() -> None:
    # RFC 9110 lets a server merge close ranges, widen them and reorder parts.
    starts, ends = [10, 60, 3000], [40, 90, 3128]
    body = _multipart(DATA, [(2990, 3200), (0, 99)], preamble=b"")
    got = cut(parts(body, CTYPE, None), starts, ends)
    assert [bytes(g) for g in got] == [DATA[s:e] for s, e in zip(starts, ends, strict=True)]


def test_single_part_answer_is_placed_by_its_content_range() -> None:
    got = cut(parts(DATA[100:400], "application/octet-stream", "bytes 100-399/4096"), [150], [200])
    assert bytes(got[0]) == DATA[150:200]
    with pytest.raises(MalformedRangesError, match="Content-Range"):
        parts(DATA[100:400], "application/octet-stream", None)


def test_cut_short_or_missing_parts_are_errors_not_short_reads() -> None:
    body = _multipart(DATA, [(10, 137)])
    with pytest.raises(MalformedRangesError, match="runs past the end"):
        parts(body[:-60], CTYPE, None)
    with pytest.raises(MalformedRangesError, match="no part with bytes 500-627"):
        cut(parts(body, CTYPE, None), [10, 500], [138, 628])
    with pytest.raises(MalformedRangesError, match="no part with boundary"):
        parts(b"garbage", CTYPE, None)


def test_boundary_of() -> None:
    assert boundary_of('multipart/byteranges; boundary="abc"') == "abc"
    assert boundary_of("application/octet-stream") is None
    with pytest.raises(MalformedRangesError, match="boundary"):
        boundary_of("multipart/byteranges")


def test_nginx_answers_are_parsed(tmp_path: Path) -> None:
    """The format as a real server writes it, many ranges of one file."""
    (tmp_path / "f.bin").write_bytes(DATA)
    starts = list(range(0, 4000, 37))
    ends = [s + 5 for s in starts]

    async def fetch(url: str) -> tuple[bytes, str, str | None]:
        async with aiohttp.ClientSession() as session:
            headers = {"Range": range_header(starts, ends)}
            async with session.get(url, headers=headers) as resp:
                assert resp.status == 206
                body = await resp.read()
                return body, resp.headers["Content-Type"], resp.headers.get("Content-Range")

    with NginxServer(tmp_path) as server:
        body, ctype, crange = sync(fetch(server.url + "f.bin"))
    got = cut(parts(body, ctype, crange), starts, ends)
    assert [bytes(g) for g in got] == [DATA[s:e] for s, e in zip(starts, ends, strict=True)]
