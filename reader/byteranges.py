"""HTTP multi-range requests: many byte ranges of one file in one round trip.

A cluster of points or the wedge of a neighbouring tile along a window's
edge wants a few hundred bytes from each of many rows of one file, rows
about 100 KB apart. One request per row hits the request-rate ceiling; one
request over all the rows moves ten times the bytes. HTTP answers this
itself (RFC 9110, section 14): ``Range: bytes=a-b,c-d,...`` returns the
ranges as the parts of one ``multipart/byteranges`` body. nginx and Apache
serve it for static files; S3 does not, and a server that ignores it
answers 200 with the whole file, which the caller must detect before
reading the body. This module is the format: the request header, and the
parts of the answer cut back into the ranges asked for.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Sequence

#: Ranges per request. Apache's ``MaxRanges`` default is 200 (above it the
#: whole file comes back) and 200 ranges fit a 4 KiB header line, well
#: inside the 8 KiB that nginx and Apache accept.
MAX_RANGES = 200

_CONTENT_RANGE = re.compile(rb"content-range:\s*bytes\s+(\d+)-(\d+)/(?:\d+|\*)", re.IGNORECASE)
_SINGLE = re.compile(r"bytes\s+(\d+)-(\d+)/(?:\d+|\*)", re.IGNORECASE)


@functools.lru_cache(maxsize=64)
def _part_pattern(boundary: bytes) -> re.Pattern[bytes]:
    """One part's delimiter and headers, capturing its Content-Range (one match per part)."""
    return re.compile(
        rb"(?:\r\n)?--" + re.escape(boundary) + rb"\r\n"
        rb"(?P<headers>(?:[^\r\n]+\r\n){0,16}?)\r\n",
    )


class MalformedRangesError(ValueError):
    """The answer to a ranged request is not what HTTP says it should be."""


def range_header(starts: Sequence[int], ends: Sequence[int]) -> str:
    """``Range`` header value for half-open ranges ``[start, end)``, in order."""
    return "bytes=" + ",".join(f"{s}-{e - 1}" for s, e in zip(starts, ends, strict=True))


def boundary_of(content_type: str) -> str | None:
    """The boundary of a ``multipart/byteranges`` content type, else ``None``."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/byteranges":
        return None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip().strip('"')
    raise MalformedRangesError(f"multipart/byteranges without a boundary: {content_type!r}")


def parts(
    body: bytes, content_type: str, content_range: str | None
) -> list[tuple[int, memoryview]]:
    """The ``(first byte, data)`` parts of a 206 answer, in the order sent.

    A single-part answer (one range asked, or a server that merged all of
    them) carries its place in ``Content-Range``; a multipart one in each
    part's header. Views share ``body``: cutting 8 MiB of rows copies
    nothing.
    """
    view = memoryview(body)
    boundary = boundary_of(content_type)
    if boundary is None:
        single = _SINGLE.fullmatch((content_range or "").strip())
        if single is None:
            raise MalformedRangesError(
                f"a 206 answer without a multipart body needs Content-Range; got {content_range!r}"
            )
        return [(int(single[1]), view)]
    part = _part_pattern(boundary.encode("latin-1")).match
    out: list[tuple[int, memoryview]] = []
    pos = 0
    while True:
        m = part(body, pos)
        if m is None:
            break
        cr = _CONTENT_RANGE.search(m["headers"])
        if cr is None:
            raise MalformedRangesError("a multipart/byteranges part has no Content-Range")
        first, last = int(cr[1]), int(cr[2])
        start, stop = m.end(), m.end() + last - first + 1
        if last < first or stop > len(body):
            raise MalformedRangesError(
                f"part bytes {first}-{last} runs past the end of a {len(body)}-byte answer"
            )
        out.append((first, view[start:stop]))
        pos = stop
    if not out:
        raise MalformedRangesError(f"no part with boundary {boundary!r} in {len(body)} bytes")
    return out


def cut(
    got: Sequence[tuple[int, memoryview]], starts: Sequence[int], ends: Sequence[int]
) -> list[memoryview]:
    """Each wanted range ``[start, end)`` out of the parts that hold it.

    Servers may merge, reorder or widen ranges (RFC 9110 allows it), so
    each range is looked up by offset, not by position; a range no part
    holds whole is an error, never a short read.
    """
    got = sorted(got, key=lambda p: p[0])
    firsts = [p[0] for p in got]
    out: list[memoryview] = []
    for s, e in zip(starts, ends, strict=True):
        i = bisect.bisect_right(firsts, s) - 1
        if i < 0 or got[i][0] + len(got[i][1]) < e:
            raise MalformedRangesError(f"the answer holds no part with bytes {s}-{e - 1}")
        first, data = got[i]
        out.append(data[s - first : e - first])
    return out
