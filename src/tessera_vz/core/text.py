"""Untrusted text made safe to show: no terminal control reaches a screen or a log.

Tile names, checksums, paths and server answers come from indexes and
servers we do not control. Printed as they are, an escape sequence in a
tile name (``\\x1b]0;…``, ``\\x1b[2J``) would retitle or clear the user's
terminal, and a newline would forge a log line. :func:`printable` is the
one place such text is made inert: every control character (C0, DEL, C1,
and the bidirectional overrides that reorder what a terminal shows) is
written as its ``repr``-style escape, everything else is kept.
"""

from __future__ import annotations

import logging
import re

#: C0 controls, DEL, C1 controls, and Unicode bidi/format characters that
#: change how the text around them is displayed.
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def _escape(m: re.Match[str]) -> str:
    ch = m.group(0)
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, limit: int = 300) -> str:
    """``text`` with control characters escaped (``\\x1b``), at most ``limit`` characters kept.

    Use it on every value that came from an index or a server before it
    becomes part of a message, a log line or rich output (where
    :func:`rich.markup.escape` is applied on top, for markup).
    """
    s = str(text)
    if len(s) > limit:
        s = s[:limit] + "…"
    return _UNSAFE.sub(_escape, s)


class PrintableFormatter(logging.Formatter):
    """A log formatter whose messages keep no terminal control (tracebacks stay as they are).

    Log lines name tiles, URLs and reasons read from indexes and servers; a
    newline or escape sequence in one of them must not forge a line or
    drive the terminal the log goes to.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = printable(record.message, limit=20_000)
        return super().formatMessage(record)


__all__ = ["PrintableFormatter", "printable"]
