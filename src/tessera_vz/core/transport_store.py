"""The boundary's backend for ``s3://`` and ``file://`` roots: reads through obstore.

obstore checks lengths and preconditions itself and retries by its
``retry_config``; this module turns its answers into the transport's
signals (:mod:`tessera_vz.core.transport`). ``http(s)://`` roots never come
here: obstore's client follows redirects to any origin.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Buffer, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

import obstore
import obstore.store
from obstore.exceptions import NotFoundError, PreconditionError

from tessera_vz.core import shutdown  # noqa: F401  (tokio exit hook: see the module)
from tessera_vz.core.checksums import precondition, valid_etag
from tessera_vz.core.errors import AnswerError, ConfigurationError
from tessera_vz.core.s3 import s3_settings, split_options
from tessera_vz.core.transport import (
    FileGoneError,
    IndexedFile,
    ObjectFacts,
    Ranges,
    changed,
    spill,
)
from tessera_vz.core.urls import SourceRoot

if TYPE_CHECKING:
    from obstore import GetOptions, ObjectMeta


def object_store(
    root: SourceRoot, *, options: dict[str, Any] | None = None
) -> obstore.store.LocalStore | obstore.store.S3Store:
    """An obstore store rooted at a ``file://`` or ``s3://`` root (listings, reads).

    ``http(s)://`` roots are read by :mod:`~tessera_vz.core.transport_http`,
    never by obstore, whose client follows redirects to any origin.
    Credentials and endpoints for S3 come from the environment the way
    obstore reads them (``AWS_*`` variables) plus explicit ``options``; they
    are never written anywhere by us.
    """
    opts = dict(options or {})
    retry = opts.pop("retry_config", None)
    client = opts.pop("client_options", {})
    if root.scheme == "file":
        return obstore.store.LocalStore(root.local_path)
    if root.scheme != "s3":
        raise ConfigurationError(f"no object store for {root.url}: expected file:// or s3://")
    # Our S3 keys (endpoint_url, anonymous, …) resolved with the AWS_* environment;
    # any other key is passed to obstore's S3 config as it is.
    s3, raw = split_options(opts)
    return s3_settings(s3).obstore(
        root.url, config=raw or None, client_options=client or None, retry_config=retry
    )


class ObjectStoreTransport:
    """Reads of the objects below one ``s3://`` or ``file://`` root.

    The boundary's :class:`~tessera_vz.core.transport.Transport` for them;
    state is real (the store, which pools connections), hence a class.

    Parameters
    ----------
    root
        The root; a file's object path is its URL below the root's.
    options
        S3 options, ``retry_config`` and ``client_options`` (see :func:`object_store`).
    """

    def __init__(self, root: SourceRoot, options: dict[str, Any]) -> None:
        #: An object store has no multi-range request: its ranges are read one by one.
        self.multi_range = False
        self._root = root
        self._options = options
        self._made: obstore.store.LocalStore | obstore.store.S3Store | None = None

    def _store(self) -> obstore.store.LocalStore | obstore.store.S3Store:
        """The root's store, made on first use; :class:`FileGoneError` for a missing local tree."""
        if self._made is None:
            if self._root.is_local and not Path(self._root.local_path).is_dir():
                raise FileGoneError(f"the local tree {self._root.url} is not there")
            self._made = object_store(self._root, options=self._options)
        return self._made

    def _path(self, url: str) -> str:
        """The object path of ``url`` below the root (decoded: obstore encodes it again)."""
        return unquote(url[len(self._root.url) :])

    async def read(self, file: IndexedFile, start: int, end: int) -> Buffer:
        opts: GetOptions = {"range": (start, end)}
        if file.checksum is not None:
            opts.update(precondition(file.checksum))
        try:
            got = await obstore.get_async(self._store(), self._path(file.url), options=opts)
            data = await got.bytes_async()
        except PreconditionError:
            raise changed(file.checksum) from None
        except (NotFoundError, FileNotFoundError):
            raise FileGoneError("no such object") from None
        if len(data) != end - start:
            raise AnswerError(
                f"{len(data)} bytes for the {end - start} bytes at {start}; the file is "
                "shorter than indexed or the transfer was cut",
                transient=True,
            )
        return data

    async def read_into(
        self, file: IndexedFile, start: int, end: int, into: Sequence[memoryview]
    ) -> None:
        spill(await self.read(file, start, end), into)

    async def read_ranges(
        self, file: IndexedFile, starts: Sequence[int], ends: Sequence[int]
    ) -> Ranges | None:
        return None  # no multi-range request: the boundary reads the ranges one by one

    async def probe(self, url: str, nbytes: int) -> tuple[bytes, ObjectFacts]:
        try:
            got = await obstore.get_async(
                self._store(), self._path(url), options={"range": (0, nbytes)}
            )
            prefix = (await got.bytes_async()).to_bytes()
        except (NotFoundError, FileNotFoundError):
            raise FileGoneError("no such object") from None
        return prefix, _facts(got.meta)

    async def head(self, url: str) -> ObjectFacts:
        try:
            meta = await obstore.head_async(self._store(), self._path(url))
        except (NotFoundError, FileNotFoundError):
            raise FileGoneError("no such object") from None
        return _facts(meta)

    async def fetch(self, url: str, limit: int) -> bytes:
        try:
            got = await obstore.get_async(self._store(), self._path(url))
        except (NotFoundError, FileNotFoundError):
            raise FileGoneError("no such object") from None
        if int(got.meta["size"]) > limit:
            raise AnswerError(f"{got.meta['size']} bytes, over the {limit}-byte limit")
        return (await got.bytes_async()).to_bytes()


def _facts(meta: ObjectMeta) -> ObjectFacts:
    modified = cast(object, meta.get("last_modified"))
    return ObjectFacts(
        int(meta["size"]),
        valid_etag(meta.get("e_tag")),
        modified if isinstance(modified, dt.datetime) else None,
    )


__all__ = ["ObjectStoreTransport", "object_store"]
