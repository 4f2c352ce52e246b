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
from tessera_vz.reader.s3 import s3_settings, split_options

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
    # Our S3 keys (endpoint_url, anonymous, …) resolved with the AWS_* environment;
    # any other key is passed to obstore's S3 config as it is.
    s3, raw = split_options(opts)
    return s3_settings(s3).obstore(
        root.url,
        config=cast(Any, raw or None),
        client_options=client or None,
        retry_config=retry,
    )


def retry_options(
    *,
    retries: int,
    timeout: float,
    connect_timeout: float | None = None,
    backoff: float = 0.1,
    max_backoff: float = 5.0,
) -> dict[str, Any]:
    """``retry_config`` and ``client_options`` for :func:`object_store`.

    A mirror under load answers 503, drops connections or stalls; obstore
    retries those with exponential backoff, and ``timeout`` bounds each
    attempt so a stalled server costs at most ``(retries + 1) * timeout``
    per file instead of hanging the run. A file that still fails becomes a
    tile-level failure in the report.
    """
    if retries < 0 or timeout <= 0 or backoff < 0:
        raise ConfigurationError(
            f"retries must be >= 0, timeout > 0 and backoff >= 0; got retries={retries}, "
            f"timeout={timeout}, backoff={backoff}"
        )
    connect = connect_timeout if connect_timeout is not None else min(timeout, 5.0)
    return {
        "retry_config": {
            "max_retries": int(retries),
            "backoff": {
                "init_backoff": dt.timedelta(seconds=backoff),
                "max_backoff": dt.timedelta(seconds=max(backoff, max_backoff)),
                "base": 2,
            },
            "retry_timeout": dt.timedelta(seconds=(retries + 1) * (timeout + max_backoff)),
        },
        "client_options": {
            "timeout": dt.timedelta(seconds=timeout),
            "connect_timeout": dt.timedelta(seconds=connect),
        },
    }


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
