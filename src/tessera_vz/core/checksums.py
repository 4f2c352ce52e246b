"""Checksums: what the index records about a source file, and the preconditions that enforce it.

Every virtual reference and every row of the tiles table carries the source
object's checksum: its ETag, or its last-modified time where an ETag cannot
be trusted. Stored as text (:func:`checksum_text`), read back and validated
(:func:`checksum_value`), and rendered as the request precondition that
makes a read of a changed file fail instead of returning other bytes
(:func:`http_precondition` for our HTTP client, :func:`precondition` for
obstore). Pure functions, no I/O: the tiles table validates the checksums
it holds without loading a network client.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from obstore import GetOptions

_DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: An entity tag as HTTP allows it (RFC 9110: visible ASCII, optionally weak).
_ETAG = re.compile(r'^(W/)?"?[\x21\x23-\x7e]{1,512}"?$')


def checksum_text(checksum: str | dt.datetime) -> str:
    """Printable form of a checksum, for the tiles table and reports."""
    if isinstance(checksum, dt.datetime):
        return checksum.astimezone(dt.UTC).strftime(_DATE_FORMAT)
    return checksum


@functools.lru_cache(maxsize=65536)
def checksum_value(text: str) -> str | dt.datetime:
    """Inverse of :func:`checksum_text`; ``ValueError`` for a value no server could have sent.

    The text comes from a repository, an untrusted input: it becomes a
    request header, so control characters, line breaks and oversized values
    are refused here, never sent.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a checksum string, found {type(text).__name__}")
    if _DATE.fullmatch(text):
        try:
            return dt.datetime.strptime(text, _DATE_FORMAT).replace(tzinfo=dt.UTC)
        except ValueError:
            raise ValueError(f"checksum {text!r} is not a valid date") from None
    if not _ETAG.fullmatch(text):
        raise ValueError(
            f"checksum {text[:80]!r} is neither an ETag (visible ASCII, at most 512 "
            "characters) nor a UTC time YYYY-MM-DDTHH:MM:SSZ"
        )
    return text


def valid_etag(value: object) -> str | None:
    """An answer's ETag as text, or ``None`` when absent or not one HTTP allows."""
    text = str(value) if value is not None else None
    return text if text is not None and _ETAG.fullmatch(text) else None


@functools.lru_cache(maxsize=65536)
def http_precondition(checksum: str) -> dict[str, str]:
    """The request headers that enforce a recorded checksum (tiles-table text).

    The dict is shared between calls (cached): copy it before changing it.
    """
    value = checksum_value(checksum)
    if isinstance(value, dt.datetime):
        return {"If-Unmodified-Since": email.utils.format_datetime(value.astimezone(dt.UTC), True)}
    return {"If-Match": value if value.startswith(('"', "W/")) else f'"{value}"'}


@functools.lru_cache(maxsize=65536)
def precondition(checksum: str) -> GetOptions:
    """The same precondition as obstore ``GetOptions`` (shared between calls: copy it)."""
    value = checksum_value(checksum)
    if isinstance(value, dt.datetime):
        return {"if_unmodified_since": value}
    return {"if_match": value}


__all__ = ["checksum_text", "checksum_value", "http_precondition", "precondition", "valid_etag"]
