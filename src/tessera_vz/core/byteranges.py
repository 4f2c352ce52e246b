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

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.errors import TesseraError

#: Ranges per request. Apache's ``MaxRanges`` default is 200 (above it the
#: whole file comes back) and 200 ranges fit a 4 KiB header line, well
#: inside the 8 KiB that nginx and Apache accept.
MAX_RANGES = 200

_CONTENT_RANGE = re.compile(rb"content-range:\s*bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_SINGLE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)


#: One part's delimiter and headers (one match per part). The boundary is
#: captured, not compiled in: servers such as nginx send a new one per answer.
_PART = re.compile(
    rb"(?:\r\n)?--(?P<boundary>[^\r\n]+)\r\n(?P<headers>(?:[^\r\n]+\r\n){0,16}?)\r\n"
)


def parse_content_range(text: str | None) -> tuple[int, int, int | None] | None:
    """``(first, last, total)`` of a ``Content-Range: bytes a-b/total`` value (total ``None``
    for ``*``), or ``None`` when the value is missing or not of that form."""
    m = _SINGLE.fullmatch((text or "").strip())
    if m is None:
        return None
    return int(m[1]), int(m[2]), None if m[3] == "*" else int(m[3])


class MalformedRangesError(TesseraError, ValueError):
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


@dataclass(frozen=True)
class Parts:
    """Where the parts of a 206 answer sit: per part, its first byte in the
    file, its first byte in the body and its length. Arrays, so that cutting
    hundreds of ranges back out is one vectorised step, not an object each.
    """

    firsts: NDArray[np.int64]
    at: NDArray[np.int64]
    lengths: NDArray[np.int64]


def parts(
    body: bytes | bytearray, content_type: str, content_range: str | None, size: int | None = None
) -> Parts:
    """The parts of a 206 answer, in the order sent.

    A single-part answer (one range asked, or a server that merged all of
    them) carries its place in ``Content-Range``; a multipart one in each
    part's header. With ``size`` (the file's size as indexed), a part that
    names another total size is refused: the file is not the one indexed.
    """
    boundary = boundary_of(content_type)
    if boundary is None:
        single = parse_content_range(content_range)
        if single is None:
            raise MalformedRangesError(
                f"a 206 answer without a multipart body needs Content-Range; got {content_range!r}"
            )
        first, last, total = single
        _check_total(str(total).encode() if total is not None else b"*", size)
        if last - first + 1 != len(body):
            raise MalformedRangesError(
                f"Content-Range {content_range!r} names {last - first + 1} bytes, the body "
                f"holds {len(body)}"
            )
        return Parts(*(np.array([v], np.int64) for v in (first, 0, len(body))))
    want = boundary.encode("latin-1")
    firsts: list[int] = []
    at: list[int] = []
    lengths: list[int] = []
    pos = 0
    while True:
        m = _PART.match(body, pos)
        if m is None or m["boundary"] != want:
            break
        cr = _CONTENT_RANGE.search(m["headers"])
        if cr is None:
            raise MalformedRangesError("a multipart/byteranges part has no Content-Range")
        first, last = int(cr[1]), int(cr[2])
        _check_total(cr[3], size)
        start, stop = m.end(), m.end() + last - first + 1
        if last < first or stop > len(body):
            raise MalformedRangesError(
                f"part bytes {first}-{last} runs past the end of a {len(body)}-byte answer"
            )
        firsts.append(first)
        at.append(start)
        lengths.append(stop - start)
        pos = stop
    if not firsts:
        raise MalformedRangesError(f"no part with boundary {boundary!r} in {len(body)} bytes")
    if not _closes(body, pos, want):
        raise MalformedRangesError(
            f"the multipart answer does not end with its closing delimiter after part "
            f"{len(firsts)} (byte {pos} of {len(body)}): a part the parser cannot read, or "
            "an answer cut short"
        )
    return Parts(*(np.asarray(v, np.int64) for v in (firsts, at, lengths)))


class SizeMismatchError(MalformedRangesError):
    """The answer names a file size other than the one indexed: the file changed."""


def _check_total(total: bytes, size: int | None) -> None:
    if size is not None and total != b"*" and int(total) != size:
        raise SizeMismatchError(
            f"the answer says the file holds {int(total)} bytes; it held {size} when indexed"
        )


def _closes(body: bytes | bytearray, pos: int, boundary: bytes) -> bool:
    """Whether the close delimiter ``CRLF--boundary--`` follows at ``pos`` (an epilogue may
    follow, ignored as RFC 2046 says)."""
    return body.startswith(b"\r\n--%s--" % boundary, pos)


def cut(found: Parts, starts: Sequence[int], ends: Sequence[int]) -> NDArray[np.int64]:
    """Where in the body each wanted range ``[start, end)`` begins.

    Servers may merge, reorder or widen ranges (RFC 9110 allows it), so
    each range is looked up by offset, not by position; a range no part
    holds whole is an error, never a short read.
    """
    order = np.argsort(found.firsts, kind="stable")
    firsts, at, lengths = found.firsts[order], found.at[order], found.lengths[order]
    lasts = firsts + lengths  # exclusive
    # Parts must not overlap: a part sent twice, or two parts disagreeing on
    # shared bytes, leaves no way to tell which bytes are the file's.
    clash = np.flatnonzero(firsts[1:] < lasts[:-1])
    if clash.size:
        k = int(clash[0])
        raise MalformedRangesError(
            f"the answer's parts overlap (bytes {firsts[k]}-{lasts[k] - 1} and "
            f"{firsts[k + 1]}-{lasts[k + 1] - 1}): a part sent twice or two versions of the "
            "same bytes; refusing the answer"
        )
    s, e = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    i = np.searchsorted(firsts, s, side="right") - 1
    j = np.maximum(i, 0)
    bad = (i < 0) | (lasts[j] < e)
    if bad.any():
        k = int(np.argmax(bad))
        raise MalformedRangesError(f"the answer holds no part with bytes {s[k]}-{e[k] - 1}")
    # Every part must hold something that was asked: a part of other bytes
    # is a server answering another request.
    used = np.zeros(firsts.size, dtype=bool)
    used[j] = True
    if not used.all():
        k = int(np.argmin(used))
        raise MalformedRangesError(
            f"the answer carries bytes {firsts[k]}-{lasts[k] - 1}, which hold none of the "
            "ranges asked for"
        )
    return at[j] + (s - firsts[j])


def locate(
    body: bytes | bytearray,
    content_type: str,
    content_range: str | None,
    starts: Sequence[int],
    ends: Sequence[int],
    size: int | None = None,
) -> NDArray[np.int64]:
    """Where in a 206 answer's body each wanted range ``[start, end)`` begins.

    Servers like nginx answer every range as asked, in order, each part's
    headers the same but for its numbers. Then the first part's headers
    predict all the others, and checking each prediction in place costs a
    fraction of parsing it (a window's wedges are hundreds of parts). Any
    other answer (merged, reordered, widened parts) is parsed part by part,
    and refused if its parts overlap, miss a range, carry bytes not asked
    for, or name a file size other than ``size``: never a short, shifted or
    doubled range.
    """
    boundary = boundary_of(content_type)
    if boundary is not None and len(starts) > 1:
        at = _as_asked(body, boundary.encode("latin-1"), starts, ends, size)
        if at is not None:
            return at
    return cut(parts(body, content_type, content_range, size), starts, ends)


def _as_asked(
    body: bytes | bytearray,
    boundary: bytes,
    starts: Sequence[int],
    ends: Sequence[int],
    size: int | None,
) -> NDArray[np.int64] | None:
    """The parts' places if each range came back as asked and in order, else ``None``."""
    m = _PART.match(body)
    if m is None or m["boundary"] != boundary:
        return None
    cr = _CONTENT_RANGE.search(m["headers"])
    if cr is None or (int(cr[1]), int(cr[2]) + 1) != (starts[0], ends[0]):
        return None
    _check_total(cr[3], size)  # every later part repeats the first's total
    # The first part's delimiter and headers with its numbers cut out; every
    # later part's delimiter starts with CRLF (RFC 2046), the first may not.
    first = m.start() + (2 if body.startswith(b"\r\n", m.start()) else 0)
    numbers = m.start("headers") + cr.start(1), m.start("headers") + cr.end(2)
    pre, post = b"\r\n" + body[first : numbers[0]], body[numbers[1] : m.end()]
    out = [m.end()]
    pos = m.end() + ends[0] - starts[0]
    for s, e in zip(starts[1:], ends[1:], strict=True):
        expect = b"%s%d-%d%s" % (pre, s, e - 1, post)
        if not body.startswith(expect, pos):
            return None
        pos += len(expect)
        out.append(pos)
        pos += e - s
    if pos > len(body) or not _closes(body, pos, boundary):
        return None  # parsed part by part, which names what is wrong
    return np.asarray(out, np.int64)
