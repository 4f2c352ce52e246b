"""Tile sources: turn a SOURCE argument into an obstore store and URLs.

A source root is where a TESSERA tree lives (a local directory, ``file://``,
``http(s)://`` or ``s3://``). The indexer reads headers through an obstore
store rooted there; the repository records the same root as a virtual chunk
container so that readers fetch the bytes from the original files.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import obstore.store
from tessera_vz.reader.errors import ConfigurationError

_SCHEMES = ("file", "http", "https", "s3")


@dataclass(frozen=True)
class SourceRoot:
    """A normalised tree root: ``url`` always ends with ``/``."""

    url: str

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def local_path(self) -> str:
        """Filesystem path of a ``file://`` root (percent-decoded: ``%20`` is a space)."""
        return unquote(urlsplit(self.url).path)

    def url_of(self, rel: str) -> str:
        """Absolute URL of a path relative to the root."""
        return self.url + rel


def source_root(source: str) -> SourceRoot:
    """Normalise a SOURCE argument (path or URL) into a :class:`SourceRoot`."""
    parts = urlsplit(source)
    if parts.scheme in ("", "file") or (len(parts.scheme) == 1 and os.name == "nt"):
        local = unquote(parts.path) if parts.scheme == "file" else source
        path = Path(local).expanduser().resolve()
        if not path.is_dir():
            raise ConfigurationError(
                f"source {source!r} is not a directory; expected the root of a TESSERA "
                "tree ({root}/{year}/grid_…/grid_….npy)"
            )
        return SourceRoot(path.as_uri().rstrip("/") + "/")
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(
            f"source {source!r} has scheme {parts.scheme!r}; expected a local path, "
            "file://, http://, https:// or s3://"
        )
    if not parts.netloc:
        raise ConfigurationError(f"source {source!r} has no host or bucket")
    return SourceRoot(source.rstrip("/") + "/")


def object_store(root: SourceRoot, *, options: dict[str, Any] | None = None) -> Any:
    """An obstore store rooted at ``root``.

    Credentials and endpoints for S3 come from the environment the way
    obstore reads them (``AWS_*`` variables) plus explicit ``options``; they
    are never written anywhere by us.
    """
    opts = dict(options or {})
    retry = opts.pop("retry_config", None)
    client = opts.pop("client_options", {})
    if root.scheme == "file":
        return obstore.store.LocalStore(root.local_path)
    if root.scheme in ("http", "https"):
        if root.scheme == "http":
            client = {"allow_http": True, **client}
        return obstore.store.HTTPStore.from_url(root.url, client_options=client, retry_config=retry)
    return obstore.store.S3Store.from_url(
        root.url,
        config=cast(Any, opts or None),
        client_options=client or None,
        retry_config=retry,
    )


def checksum_of(root: SourceRoot, meta: dict[str, Any]) -> str | dt.datetime:
    """The checksum to record on a virtual reference for an object.

    S3 honours ``If-Match`` with an ETag, so an ETag it is. HTTP servers such
    as nginx compare the unquoted ETag icechunk sends literally and refuse
    every read, and local files have no ETag worth the name, so those use the
    last-modified time, rounded up to the whole second because icechunk keeps
    seconds and sub-second mtimes would otherwise look "modified after".
    """
    etag = meta.get("e_tag")
    if root.scheme == "s3" and etag:
        return str(etag)
    modified: dt.datetime = meta["last_modified"]
    return dt.datetime.fromtimestamp(math.ceil(modified.timestamp()), tz=dt.UTC)


def checksum_text(checksum: str | dt.datetime) -> str:
    """Printable form of a checksum, for the tiles table and reports."""
    if isinstance(checksum, dt.datetime):
        return checksum.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return checksum


def checksum_value(text: str) -> str | dt.datetime:
    """Inverse of :func:`checksum_text`."""
    if len(text) == 20 and text.endswith("Z") and text[4] == "-":
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    return text


def rebase(path_or_url: str, root: SourceRoot) -> str:
    """Path relative to ``root`` of a manifest's ``grid_path``/``scales_path``.

    Manifests list either paths relative to the tree or absolute URLs of some
    mirror; for a URL only its ``{year}/grid_…/file`` tail is kept and rebased
    onto SOURCE, since the mirror in the manifest need not be the one indexed.
    A path that would resolve outside SOURCE is refused.
    """
    parts = urlsplit(path_or_url)
    if parts.scheme and parts.scheme not in _SCHEMES:
        raise ValueError(f"manifest path {path_or_url!r} has unsupported scheme {parts.scheme!r}")
    raw = parts.path if parts.scheme else path_or_url
    if parts.scheme:
        segments = [s for s in raw.split("/") if s]
        if len(segments) < 3:
            raise ValueError(
                f"manifest URL {path_or_url!r} does not end in {{year}}/grid_…/file.npy"
            )
        tail = segments[-3:]
        if any(s in (".", "..") for s in tail):
            raise ValueError(
                f"manifest URL {path_or_url!r} resolves outside SOURCE {root.url}; "
                "refusing to read it"
            )
        return "/".join(tail)
    if raw.startswith("/"):
        base = root.local_path if root.is_local else ""
        if not root.is_local or not raw.startswith(base):
            raise ValueError(
                f"manifest path {path_or_url!r} is absolute and outside SOURCE {root.url}"
            )
        raw = raw[len(base) :]
    norm = posixpath.normpath(raw)
    if norm.startswith("..") or norm.startswith("/") or norm == ".":
        raise ValueError(
            f"manifest path {path_or_url!r} resolves outside SOURCE {root.url}; refusing to read it"
        )
    return norm
