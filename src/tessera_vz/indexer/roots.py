"""Tile sources: turn a SOURCE argument into a root, checksums and paths.

A source root is where a TESSERA tree lives (a local directory, ``file://``,
``http(s)://`` or ``s3://``). The indexer reads headers through the
reader's boundary (:func:`source_reader`) and lists local and S3 trees
through an obstore store; the repository records the same root as a virtual
chunk container so that readers fetch the bytes from the original files.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tessera_vz.core.boundary import (
    SourceFiles,
    checksum_text,
    checksum_value,
    object_store,
)
from tessera_vz.core.errors import ConfigurationError, InvalidTileError
from tessera_vz.core.options import ReadOptions
from tessera_vz.core.urls import SourceRoot, check_root

_SCHEMES = ("file", "http", "https", "s3")


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
    return SourceRoot(check_root(source))


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
    modified = meta.get("last_modified")
    if not isinstance(modified, dt.datetime):
        raise InvalidTileError(
            "the source sends no Last-Modified time (nor, on S3, an ETag); tessera-vz records "
            "one per file so that a file changed after indexing fails to read. Serve the tree "
            "with Last-Modified headers (any static web server does)"
        )
    return dt.datetime.fromtimestamp(math.ceil(modified.timestamp()), tz=dt.UTC)


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


def source_reader(
    root: SourceRoot, options: ReadOptions, also: list[str] | None = None
) -> SourceFiles:
    """The boundary reading a tree's files: ``root`` authorised, plus ``also``.

    ``also`` are prefixes the user trusts besides the tree itself (a CDN the
    mirror redirects to, the manifest's location); nothing else is read.
    """
    return SourceFiles([root.url, *(also or [])], options)


__all__ = [
    "SourceRoot",
    "checksum_of",
    "checksum_text",
    "checksum_value",
    "object_store",
    "rebase",
    "source_reader",
    "source_root",
]
