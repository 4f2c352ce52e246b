"""Where repositories live and which sources they may read from.

A zone's repository is a directory (or S3 prefix) ``utm{zz}.icechunk`` below
the index root. Each source root a repository references is a *virtual chunk
container* in its config; a reader authorises only the containers it trusts.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import icechunk as ic

from .errors import ConfigurationError

log = logging.getLogger(__name__)

_QUIET = False


def quiet_icechunk() -> None:
    """Keep icechunk's Rust logs to errors unless the user set ``ICECHUNK_LOG``."""
    global _QUIET
    if not _QUIET and "ICECHUNK_LOG" not in os.environ:
        ic.set_logs_filter("error")
    _QUIET = True


def container_name(url_prefix: str) -> str:
    """Stable short name of a source root, used in ``vcc://name/…`` locations.

    Relative locations keep every reference a few bytes long instead of
    repeating the root URL, and the name is derived from the URL so that
    separate runs agree on it.
    """
    return "src" + hashlib.sha1(url_prefix.encode()).hexdigest()[:8]


def container_for(url_prefix: str, *, s3_options: dict[str, Any] | None = None) -> Any:
    """The virtual chunk container of a source root (``…/`` terminated)."""
    parts = urlsplit(url_prefix)
    store: Any
    if parts.scheme == "file":
        store = ic.local_filesystem_store(parts.path)
    elif parts.scheme in ("http", "https"):
        store = ic.http_store()
    elif parts.scheme == "s3":
        opts = dict(s3_options or {})
        store = ic.s3_store(
            region=opts.get("region"),
            endpoint_url=opts.get("endpoint_url"),
            allow_http=bool(opts.get("allow_http", False)),
            anonymous=bool(opts.get("anonymous", False)),
            force_path_style=bool(opts.get("force_path_style", False)),
            s3_compatible=bool(opts.get("endpoint_url")),
        )
    else:
        raise ConfigurationError(f"unsupported source scheme in {url_prefix!r}")
    return ic.VirtualChunkContainer(url_prefix, store, name=container_name(url_prefix))


def storage_for(location: str, *, s3_options: dict[str, Any] | None = None) -> Any:
    """Icechunk storage of one repository at a local path or ``s3://`` URL."""
    parts = urlsplit(location)
    if parts.scheme == "s3":
        opts = dict(s3_options or {})
        return ic.s3_storage(
            bucket=parts.netloc,
            prefix=parts.path.strip("/"),
            region=opts.get("region"),
            endpoint_url=opts.get("endpoint_url"),
            allow_http=bool(opts.get("allow_http", False)),
            anonymous=opts.get("anonymous"),
            force_path_style=bool(opts.get("force_path_style", False)),
            from_env=None if opts.get("anonymous") else True,
        )
    if parts.scheme not in ("", "file"):
        raise ConfigurationError(
            f"repository location {location!r}: expected a local path or s3:// URL"
        )
    return ic.local_filesystem_storage(str(Path(parts.path or location).expanduser().resolve()))


def read_config(base: Any | None = None) -> Any:
    """Repository config tuned for byte-exact reads of virtual chunks.

    Icechunk splits a ranged read into parallel requests and preloads
    coordinate manifests; neither helps a reader that asks for 132 bytes, so
    one request per range and no preloading.
    """
    cfg = base if base is not None else ic.RepositoryConfig.default()
    cfg.caching = ic.CachingConfig(num_chunk_refs=2_000_000, num_snapshot_nodes=500_000)
    cfg.storage = ic.StorageSettings(
        concurrency=ic.StorageConcurrencySettings(
            max_concurrent_requests_for_object=4,
            ideal_concurrent_request_size=64 << 20,
        )
    )
    cfg.manifest = ic.ManifestConfig(
        preload=ic.ManifestPreloadConfig(max_total_refs=0),
        max_concurrent_manifest_fetches_during_commit=8,
        # Every reference of a tile array names the same file: a zstd dictionary
        # trained per manifest buys nothing and cost most of the commit time.
        virtual_chunk_location_compression=ic.ManifestVirtualChunkLocationCompressionConfig(
            min_num_chunks=65_535
        ),
    )
    return cfg


def credentials(
    containers: Iterable[str],
    *,
    allow_local_sources: bool = False,
    allowed: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Authorise the containers a reader trusts.

    Remote containers (``http(s)://``, ``s3://``) recorded in the repo are
    trusted by default, ``file://`` ones only with ``allow_local_sources``;
    ``allowed``, when given, is the explicit allow-list of URL prefixes.
    """
    allow = list(allowed) if allowed is not None else None
    out: dict[str, Any] = {}
    for prefix in containers:
        scheme = urlsplit(prefix).scheme
        if allow is not None and not any(prefix.startswith(a) for a in allow):
            log.info("not authorising virtual chunk container %s (not allowed)", prefix)
            continue
        if scheme == "file":
            if allow_local_sources or allow is not None:
                out[prefix] = ic.credentials.LocalFileSystemAccess
        elif scheme in ("http", "https"):
            out[prefix] = ic.credentials.HttpAccess
        elif scheme == "s3":
            out[prefix] = ic.s3_from_env_credentials()
    return out
