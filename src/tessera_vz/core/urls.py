"""Source roots and the URLs of files below them, built in exactly one way.

A source root is where a TESSERA tree lives (``file://``, ``http(s)://`` or
``s3://``); the index records it, and every tile's paths relative to it.
Joining the two by string concatenation gave ``/tessera//2024/grid_…`` when
a root ended in ``/`` (nginx forgives it; S3 website endpoints and many CDNs
answer 404 or another object), and a path with a space or ``#`` would name
another resource. :func:`join` is the one place a URL is built: exactly one
slash between root and path, each segment percent-encoded the way obstore
encodes object paths. Roots carrying credentials are refused, so a secret
never reaches a ``Host`` header, a log line or a repository.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from tessera_vz.core.errors import ConfigurationError

SCHEMES = ("file", "http", "https", "s3")
#: Characters a path segment keeps as they are (RFC 3986 ``pchar`` without ``%``).
_SAFE = "!$&'()*+,;=:@-._~"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


@dataclass(frozen=True)
class SourceRoot:
    """A normalised tree root: ``url`` always ends with exactly one ``/``."""

    url: str

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def is_http(self) -> bool:
        return self.scheme in ("http", "https")

    @property
    def local_path(self) -> str:
        """Filesystem path of a ``file://`` root (percent-decoded: ``%20`` is a space)."""
        return unquote(urlsplit(self.url).path)

    def url_of(self, rel: str) -> str:
        """Absolute URL of a path relative to the root (see :func:`join`)."""
        return join(self.url, rel)


def check_root(url: str) -> str:
    """The canonical form of a source root URL (one trailing ``/``), or a clear error.

    Refused: unknown schemes, no host or bucket, credentials
    (``user:password@``), a query or fragment, control characters.
    """
    if _CONTROL.search(url):
        raise ConfigurationError(
            f"source root {url!r} contains control characters; expected a plain URL"
        )
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ConfigurationError(
            f"source root {url!r} has scheme {parts.scheme!r}; expected one of "
            f"{', '.join(s + '://' for s in SCHEMES)}"
        )
    if parts.scheme != "file" and not parts.hostname:
        raise ConfigurationError(f"source root {url!r} names no host or bucket")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "a source URL must not carry credentials (user:password@host); give S3 "
            "credentials through the environment (AWS_*) and serve HTTP mirrors without them"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"source root {url!r} has a query or fragment; expected the URL of the tree's "
            "root directory"
        )
    if dot_segments(parts.path):
        raise ConfigurationError(
            f"source root {url!r} has '.' or '..' segments (a client would collapse them and "
            "read elsewhere than the root names); give the root's path without them"
        )
    return url.rstrip("/") + "/"


def dot_segments(path: str) -> bool:
    """Whether a URL path holds a ``.`` or ``..`` segment, percent-encoded or not.

    Clients and servers collapse them (``/tiles/../secret`` is ``/secret``),
    so a path holding one is not the place it seems to name: roots, allowed
    prefixes and paths with one are refused. Decoding also splits
    ``%2f``/``\\`` (servers that treat them as separators).
    """
    decoded = unquote(path).replace("\\", "/")
    return any(s in (".", "..") for s in decoded.split("/"))


def check_path(rel: str) -> str:
    """A path relative to a root, as the index records it, or ``ValueError`` saying why not.

    Relative, ``/``-separated, no empty, ``.`` or ``..`` segment, no control
    characters: such a path can only name a file below its root.
    """
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"expected a relative file path, found {rel!r}")
    if _CONTROL.search(rel):
        raise ValueError(f"path {rel!r} contains control characters")
    segments = rel.split("/")
    if rel.startswith("/") or any(s in ("", ".", "..") for s in segments):
        raise ValueError(
            f"path {rel!r} is not a plain relative path (empty, '.' or '..' segments, or "
            "a leading '/')"
        )
    return rel


def join(root: str, rel: str) -> str:
    """The URL of ``rel`` below ``root``: one slash between them, segments percent-encoded.

    ``root`` is a URL as the user or the index gave it (already encoded);
    ``rel`` is a raw relative path (see :func:`check_path`), whose segments
    are encoded here (``a b`` -> ``a%20b``, ``#`` -> ``%23``) as obstore
    encodes object paths.
    """
    check_path(rel)
    return root.rstrip("/") + "/" + "/".join(quote(s, safe=_SAFE) for s in rel.split("/"))


def origin(url: str) -> Origin:
    """``(scheme, host, port)`` of a URL, default ports filled in (for redirect checks)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def under(url: str, prefix: str) -> bool:
    """Whether ``url`` lies below ``prefix``: same scheme, host and port, path on segment bounds.

    Compares parsed parts, never strings: ``http://a.org:80/x`` is under
    ``http://A.org/``; ``http://a.org.evil/`` is not under ``http://a.org``,
    ``http://h:18759/`` not under ``http://h:1875``, ``/tilesX/`` not under
    ``/tiles``. A URL or prefix with credentials, or with a dot segment
    (:func:`dot_segments`), is under nothing.
    """
    if origin(url) != origin(prefix):
        return False
    a, b = urlsplit(url), urlsplit(prefix)
    if a.username or a.password or b.username or b.password:
        return False
    if dot_segments(a.path) or dot_segments(b.path):
        return False
    base = b.path if b.path.endswith("/") else b.path + "/"
    return (a.path if a.path.endswith("/") else a.path + "/").startswith(base)
