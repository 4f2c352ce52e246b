"""The multi-range format: request header, parts of the answer, ranges cut back out."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tessera_vz.core.byteranges import (
    MalformedRangesError,
    boundary_of,
    cut,
    locate,
    parts,
    range_header,
)
from tessera_vz.core.loop import sync
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


def _cut(
    body: bytes, ctype: str, crange: str | None, starts: list[int], ends: list[int]
) -> list[bytes]:
    """The wanted ranges as the caller sees them: where each begins in the body."""
    at = cut(parts(body, ctype, crange), starts, ends)
    return [body[a : a + e - s] for a, s, e in zip(at.tolist(), starts, ends, strict=True)]


def test_range_header_is_inclusive_and_ordered() -> None:
    assert range_header([0, 100], [10, 228]) == "bytes=0-9,100-227"


def test_parts_and_cut_give_back_every_range() -> None:
    starts, ends = [10, 500, 3000], [138, 628, 3128]
    body = _multipart(DATA, [(s, e - 1) for s, e in zip(starts, ends, strict=True)])
    got = _cut(body, CTYPE, None, starts, ends)
    assert got == [DATA[s:e] for s, e in zip(starts, ends, strict=True)]


def test_merged_reordered_and_widened_parts_still_serve_each_range() -> None:
    # RFC 9110 lets a server merge close ranges, widen them and reorder parts.
    starts, ends = [10, 60, 3000], [40, 90, 3128]
    body = _multipart(DATA, [(2990, 3200), (0, 99)], preamble=b"")
    got = _cut(body, CTYPE, None, starts, ends)
    assert got == [DATA[s:e] for s, e in zip(starts, ends, strict=True)]


def test_single_part_answer_is_placed_by_its_content_range() -> None:
    got = _cut(DATA[100:400], "application/octet-stream", "bytes 100-399/4096", [150], [200])
    assert got == [DATA[150:200]]
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
    got = _cut(body, ctype, crange, starts, ends)
    assert got == [DATA[s:e] for s, e in zip(starts, ends, strict=True)]
    at = locate(body, ctype, crange, starts, ends)
    assert [body[a : a + 5] for a in at.tolist()] == got


@pytest.mark.parametrize("preamble", [b"\r\n", b""])
def test_locate_predicts_parts_answered_as_asked(preamble: bytes) -> None:
    starts, ends = [10, 500, 3000, 3200], [138, 628, 3128, 3201]
    body = _multipart(DATA, [(s, e - 1) for s, e in zip(starts, ends, strict=True)], preamble)
    at = locate(body, CTYPE, None, starts, ends)
    assert at.tolist() == cut(parts(body, CTYPE, None), starts, ends).tolist()
    assert [body[a : a + e - s] for a, s, e in zip(at.tolist(), starts, ends, strict=True)] == [
        DATA[s:e] for s, e in zip(starts, ends, strict=True)
    ]


def test_locate_parses_any_other_answer() -> None:
    # Merged and reordered parts, and a part whose headers differ from the
    # first's, are not what was asked: each is parsed, never assumed.
    starts, ends = [10, 60, 3000], [40, 90, 3128]
    merged = _multipart(DATA, [(2990, 3200), (0, 99)])
    odd = _multipart(DATA, [(10, 39), (60, 89), (3000, 3127)]).replace(
        b"Content-Type: application/octet-stream\r\nContent-Range: bytes 60-",
        b"Content-Range: bytes 60-",
    )
    for body in (merged, odd):
        at = locate(body, CTYPE, None, starts, ends)
        got = [body[a : a + e - s] for a, s, e in zip(at.tolist(), starts, ends, strict=True)]
        assert got == [DATA[s:e] for s, e in zip(starts, ends, strict=True)]
    cut_short = _multipart(DATA, [(10, 39), (60, 89), (3000, 3127)])[:-80]
    with pytest.raises(MalformedRangesError, match="runs past the end"):
        locate(cut_short, CTYPE, None, starts, ends)
