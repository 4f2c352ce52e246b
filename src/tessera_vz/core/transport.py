"""How the bytes of one source root travel: the protocol the boundary's backends share.

:class:`~tessera_vz.core.boundary.SourceFiles` keeps authorisation, retries
and concurrency in one place and hands each single attempt to the backend of
the file's root, chosen once per root: :class:`~tessera_vz.core.transport_http.HttpTransport`
for ``http(s)://`` (aiohttp, redirects checked by hand),
:class:`~tessera_vz.core.transport_store.ObjectStoreTransport` for ``s3://``
and ``file://`` (obstore). A backend needs only the few reads below, typed
as the smallest :class:`typing.Protocol` that serves (obspec's habit), so a
test or a new scheme brings its own without touching the boundary.

A backend knows nothing of what the read is for; it says what went wrong
by raising :class:`FileChangedError` (the file is not the one indexed),
:class:`FileGoneError` (no such file) or :class:`~tessera_vz.core.errors.AnswerError`
(any other broken answer, ``transient`` if another attempt may fare
better), and the boundary names the read and the URL in the error the
caller sees.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Buffer, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from tessera_vz.core.errors import AnswerError


@dataclass(frozen=True)
class IndexedFile:
    """A source file as the index recorded it, so that a read of another version fails.

    ``checksum`` is the tiles-table text of its checksum (already validated;
    ``None`` sends no precondition) and ``size`` its size in bytes (``None``:
    unknown); an answer that contradicts either is :class:`FileChangedError`.
    """

    url: str
    checksum: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class ObjectFacts:
    """What an answer says about the object: its size and its validators."""

    size: int
    e_tag: str | None
    last_modified: dt.datetime | None

    def meta(self) -> dict[str, Any]:
        """As obstore's ``meta`` dicts spell it (``size``, ``e_tag``, ``last_modified``)."""
        return {"size": self.size, "e_tag": self.e_tag, "last_modified": self.last_modified}


#: A body holding several ranges, and where each range begins in it.
Ranges = tuple[Buffer, NDArray[np.int64]]


class FileChangedError(AnswerError):
    """The answer shows the file is not the one indexed (a failed precondition, another size).

    The message continues the sentence that starts with the file's URL
    (``" no longer matches …"``, ``": the server says …"``).
    """


class FileGoneError(AnswerError):
    """The file is not there (404, 410, no such object or file)."""


def changed(checksum: str | None) -> FileChangedError:
    """The file no longer matches its recorded checksum (a failed precondition)."""
    return FileChangedError(
        f" no longer matches the checksum recorded when it was indexed ({checksum}). The "
        "source file changed after it was indexed; re-run `tessera-vz index --reprobe` for this "
        "source to index its new bytes"
    )


class Transport(Protocol):
    """One attempt at each read the boundary makes of the files below one source root."""

    #: Whether several ranges of one file may share a request (HTTP multi-range);
    #: the boundary turns it off for a root that answers them with whole files.
    multi_range: bool

    async def read(self, file: IndexedFile, start: int, end: int) -> Buffer:
        """Bytes ``[start, end)`` of ``file``: exactly ``end - start`` of them."""
        ...

    async def read_into(
        self, file: IndexedFile, start: int, end: int, into: Sequence[memoryview]
    ) -> None:
        """Bytes ``[start, end)`` of ``file`` written into consecutive views ``into``."""
        ...

    async def read_ranges(
        self, file: IndexedFile, starts: Sequence[int], ends: Sequence[int]
    ) -> Ranges | None:
        """Several ranges of ``file`` in one request: one body and where each range begins.

        ``None`` when the origin answered with the whole file instead (its
        body unread): the caller reads the ranges one by one.
        """
        ...

    async def probe(self, url: str, nbytes: int) -> tuple[bytes, ObjectFacts]:
        """The first ``nbytes`` of ``url`` (fewer if it is shorter), its size and validators."""
        ...

    async def head(self, url: str) -> ObjectFacts:
        """Size and validators of ``url``, without its bytes."""
        ...

    async def fetch(self, url: str, limit: int) -> bytes:
        """The whole of ``url``, at most ``limit`` bytes."""
        ...


def spill(data: Buffer, into: Sequence[memoryview]) -> None:
    """Copy a range's bytes into consecutive views."""
    got, at = memoryview(data).cast("B"), 0
    for dest in into:
        dest[:] = got[at : at + len(dest)]
        at += len(dest)


__all__ = [
    "FileChangedError",
    "FileGoneError",
    "IndexedFile",
    "ObjectFacts",
    "Ranges",
    "Transport",
    "changed",
    "spill",
]
