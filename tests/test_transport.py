"""The byte boundary's parts on their own: the checksum codec, the transports, the loop.

The boundary's behaviour against misbehaving servers is proven end to end in
``test_boundary``, ``test_liar``, ``test_faults`` and ``test_direct``; here
each part is checked where it lives: the pure checksum codec, one backend per
root chosen by its scheme, retries and error naming kept in
:class:`SourceFiles` whatever the backend, obstore reads of local files,
Icechunk errors recognised by their kind, and the loop synchronous callers
run coroutines on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Buffer, Sequence
from pathlib import Path

import icechunk as ic
import pytest

from tessera_vz.core import transport
from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.byteranges import MalformedRangesError
from tessera_vz.core.checksums import (
    checksum_text,
    checksum_value,
    http_precondition,
    precondition,
)
from tessera_vz.core.errors import (
    AnswerError,
    ConfigurationError,
    RedirectRefusedError,
    SourceChangedError,
    SourceNotFoundError,
    SourceUnavailableError,
    TesseraError,
    translate_error,
)
from tessera_vz.core.loop import sync
from tessera_vz.core.options import ReadOptions, RetryPolicy
from tessera_vz.core.transport import IndexedFile, ObjectFacts, Ranges, Transport
from tessera_vz.core.transport_http import HttpTransport
from tessera_vz.core.transport_store import ObjectStoreTransport
from tessera_vz.core.urls import join

WHEN = dt.datetime(2024, 5, 1, 12, 30, 5, tzinfo=dt.UTC)

# -- the checksum codec --------------------------------------------------------------


def test_checksums_round_trip_and_render_as_preconditions() -> None:
    assert checksum_text(WHEN) == "2024-05-01T12:30:05Z"
    assert checksum_value("2024-05-01T12:30:05Z") == WHEN
    assert checksum_value('"abc-1"') == '"abc-1"'
    assert http_precondition("2024-05-01T12:30:05Z") == {
        "If-Unmodified-Since": "Wed, 01 May 2024 12:30:05 GMT"
    }
    assert http_precondition("abc") == {"If-Match": '"abc"'}
    assert http_precondition('W/"abc"') == {"If-Match": 'W/"abc"'}
    assert precondition("2024-05-01T12:30:05Z") == {"if_unmodified_since": WHEN}
    assert precondition('"abc"') == {"if_match": '"abc"'}


@pytest.mark.parametrize(
    "text",
    ["a\r\nX-Evil: 1", "", "x" * 600, "2024-13-45T99:99:99Z", "abc\n", "2024-05-01T12:30:05Z\n"],
)
def test_checksums_no_server_could_send_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        checksum_value(text)


# -- one backend per root, chosen by its scheme ----------------------------------------


def test_each_root_gets_one_backend_of_its_scheme(tmp_path: Path) -> None:
    files = SourceFiles(["https://mirror.example.org/t/", tmp_path.as_uri(), "s3://bucket/p/"])
    mirror = files._transport("https://mirror.example.org/t/2024/a.npy", "test")
    assert isinstance(mirror, HttpTransport)
    assert files._transport("https://mirror.example.org/t/2024/b.npy", "test") is mirror
    local = files._transport(tmp_path.as_uri() + "/a.npy", "test")
    assert isinstance(local, ObjectStoreTransport)
    assert isinstance(files._transport("s3://bucket/p/a.npy", "test"), ObjectStoreTransport)
    assert files.multi_range("https://mirror.example.org/t/a.npy")
    assert files.multi_range(tmp_path.as_uri() + "/a.npy")  # many ranges per local read
    assert not files.multi_range("s3://bucket/p/a.npy")
    assert not files.multi_range("https://elsewhere.example.org/a.npy")
    with pytest.raises(ConfigurationError, match=r"reading a test: .* is not authorised"):
        files._transport("https://elsewhere.example.org/a.npy", "reading a test")


# -- retries and errors stay in SourceFiles, whatever the backend --------------------


class Scripted:
    """A backend whose reads fail as scripted, then answer ``b"abcd"``."""

    def __init__(self, failures: Sequence[Exception], multi_range: bool = False) -> None:
        self.multi_range = multi_range
        self.failures = list(failures)
        self.calls = 0

    async def _next(self) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)

    async def read(self, file: IndexedFile, start: int, end: int) -> Buffer:
        await self._next()
        return b"abcd"[start:end]

    async def read_into(self, file: IndexedFile, *_: object) -> None:
        await self._next()

    async def read_ranges(self, file: IndexedFile, *_: object) -> Ranges | None:
        await self._next()
        return None  # as a server that answers multi-range requests with the whole file

    async def probe(self, url: str, nbytes: int) -> tuple[bytes, ObjectFacts]:
        await self._next()
        return b"ab", ObjectFacts(4, None, None)

    async def head(self, url: str) -> ObjectFacts:
        await self._next()
        return ObjectFacts(4, None, None)

    async def fetch(self, url: str, limit: int) -> bytes:
        await self._next()
        return b"abcd"


class Through(SourceFiles):
    """Source files read through one given backend."""

    def __init__(self, backend: Transport, retries: int = 2) -> None:
        super().__init__(["https://m.example.org/"], ReadOptions(policy=_quick(retries)))
        self.backend = backend

    def _transport_of(self, root: str) -> Transport:
        return self.backend


def _quick(retries: int) -> RetryPolicy:
    return RetryPolicy(retries=retries, timeout=5.0, backoff=0.0, max_backoff=0.0)


URL = "https://m.example.org/2024/a.npy"


def test_transient_failures_are_retried_and_the_last_reason_named() -> None:
    backend = Scripted([AnswerError("HTTP 503", transient=True)])
    assert bytes(sync(Through(backend).get(URL, 1, 3, None, "reading a test"))) == b"bc"
    assert backend.calls == 2
    backend = Scripted([AnswerError("HTTP 503", transient=True)] * 3)
    with pytest.raises(SourceUnavailableError) as info:
        sync(Through(backend).head(URL, "reading a test"))
    assert str(info.value).startswith(f"reading a test: {URL}: HTTP 503 (after 3 attempts)")
    assert info.value.transient and backend.calls == 3


def test_broken_answers_fail_at_once() -> None:
    backend = Scripted([AnswerError("asked for bytes 0-1, the answer holds bytes 5-6")])
    with pytest.raises(SourceUnavailableError, match="the answer holds") as info:
        sync(Through(backend).fetch(URL, "reading a test"))
    assert not info.value.transient and backend.calls == 1
    backend = Scripted([RedirectRefusedError("redirected to http://evil/")])
    with pytest.raises(SourceUnavailableError, match="evil"):
        sync(Through(backend).probe(URL, 2, "reading a test"))
    assert backend.calls == 1


def test_changed_and_gone_files_are_named_with_purpose_and_url() -> None:
    backend = Scripted([transport.changed('"v1"')])
    with pytest.raises(SourceChangedError) as info:
        sync(Through(backend).get(URL, 0, 2, '"v1"', "reading points, tile grid_0.85_49.95"))
    assert str(info.value).startswith(
        f"reading points, tile grid_0.85_49.95: {URL} no longer matches the checksum recorded "
        'when it was indexed ("v1")'
    )
    assert backend.calls == 1
    with pytest.raises(SourceNotFoundError, match=f"verifying: {URL} is gone"):
        sync(Through(Scripted([transport.FileGoneError("HTTP 404")])).head(URL, "verifying"))


def test_a_checksum_no_indexer_writes_is_refused_before_any_request() -> None:
    backend = Scripted([])
    with pytest.raises(SourceUnavailableError, match="damaged or was crafted"):
        sync(Through(backend).get(URL, 0, 2, "bad\r\nX-Evil: 1", "reading a test"))
    assert backend.calls == 0


def test_a_root_answering_multi_range_with_whole_files_is_read_range_by_range() -> None:
    backend = Scripted([], multi_range=True)
    files = Through(backend)
    body, at = sync(files.get_ranges(URL, [0, 2], [1, 4], None, "reading a test"))
    assert bytes(body)[at[0] : at[0] + 1] == b"a" and bytes(body)[at[1] : at[1] + 2] == b"cd"
    assert not backend.multi_range and not files.multi_range(URL)
    assert backend.calls == 2  # the refused multi-range request, then one for the close ranges


# -- obstore reads of local files -----------------------------------------------------


def test_local_files_are_read_through_obstore(tmp_path: Path) -> None:
    data = bytes(range(200))
    (tmp_path / "a b.npy").write_bytes(data)
    root = tmp_path.as_uri() + "/"
    url = join(root, "a b.npy")
    files = SourceFiles([root], ReadOptions(policy=_quick(0)))
    assert bytes(sync(files.get(url, 10, 20, None, "reading a test"))) == data[10:20]
    body, at = sync(files.get_ranges(url, [0, 50], [5, 60], None, "reading a test"))
    assert [bytes(body)[a : a + n] for a, n in zip(at.tolist(), (5, 10), strict=True)] == [
        data[0:5],
        data[50:60],
    ]
    views = [memoryview(bytearray(3)), memoryview(bytearray(4))]
    sync(files.get_into(url, 100, 107, None, "reading a test", views))
    assert b"".join(bytes(v) for v in views) == data[100:107]
    prefix, facts = sync(files.probe(url, 8, "reading a test"))
    assert prefix == data[:8] and facts.size == 200 and facts.last_modified is not None
    assert sync(files.head(url, "reading a test")).size == 200
    assert sync(files.fetch(url, "reading a test")) == data
    with pytest.raises(SourceUnavailableError, match="over the 100-byte limit"):
        sync(files.fetch(url, "reading a test", limit=100))
    stale = checksum_text(facts.last_modified - dt.timedelta(days=1))
    with pytest.raises(SourceChangedError, match="no longer matches"):
        sync(files.get(url, 0, 4, stale, "reading a test"))
    with pytest.raises(SourceNotFoundError, match=r"reading a test: .*/gone\.npy is gone"):
        sync(files.get(join(root, "gone.npy"), 0, 4, None, "reading a test"))
    missing = (tmp_path / "nowhere").as_uri() + "/"
    with pytest.raises(SourceNotFoundError, match="is gone"):
        sync(SourceFiles([missing]).head(missing + "a.npy", "reading a test"))


# -- errors ---------------------------------------------------------------------------


def test_every_boundary_error_is_ours_under_a_builtin() -> None:
    assert issubclass(AnswerError, TesseraError) and issubclass(AnswerError, OSError)
    assert issubclass(RedirectRefusedError, AnswerError)
    assert issubclass(transport.FileChangedError, AnswerError)
    assert issubclass(transport.FileGoneError, AnswerError)
    assert issubclass(MalformedRangesError, TesseraError)
    assert issubclass(MalformedRangesError, ValueError)
    assert AnswerError("cut", transient=True).transient


def test_icechunk_errors_are_recognised_by_their_kind() -> None:
    modified = ic.StorageError(
        "the checksum of the object owning the virtual chunk has changed (file:///x)",
        ic.ErrorKind.VIRTUAL_CHUNK_MODIFIED,
    )
    got = translate_error(modified, "tile grid_0.85_49.95")
    assert isinstance(got, SourceChangedError)
    assert str(got).startswith("tile grid_0.85_49.95: the checksum of the object")
    refused = ic.IcechunkError("any words", ic.ErrorKind.UNAUTHORIZED_VIRTUAL_CHUNK_CONTAINER)
    assert isinstance(translate_error(refused, "tile t"), ConfigurationError)
    # The kind decides, not the words: another failure that mentions them is neither.
    other = ic.StorageError("not authorized; checksum has changed", ic.ErrorKind.OBJECT_STORE)
    assert type(translate_error(other, "tile t")) is SourceUnavailableError
    assert type(translate_error(KeyError("no chunk c/0"), "tile t")) is SourceUnavailableError


# -- the loop synchronous callers use -------------------------------------------------


def test_sync_runs_on_one_loop_from_any_thread_even_inside_a_running_loop() -> None:
    async def which() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    first = sync(which())
    seen: list[asyncio.AbstractEventLoop] = []
    worker = threading.Thread(target=lambda: seen.append(sync(which())))
    worker.start()
    worker.join()

    async def inside_another_loop() -> asyncio.AbstractEventLoop:
        return sync(which())  # as in a notebook: blocks this loop, runs on ours

    assert seen == [first] and asyncio.run(inside_another_loop()) is first

    async def fails() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        sync(fails())

    async def nested() -> None:
        sync(which())

    with pytest.raises(RuntimeError, match="own loop"):
        sync(nested())
