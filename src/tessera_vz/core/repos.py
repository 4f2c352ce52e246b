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

from tessera_vz.core import shutdown  # noqa: F401  (tokio exit hook: see the module)
from tessera_vz.core.addresses import check_resolved
from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.layout import zone_of_repo
from tessera_vz.core.options import ReadOptions, RetryPolicy
from tessera_vz.core.permissions import authorised, private_permitted
from tessera_vz.core.s3 import s3_settings
from tessera_vz.core.text import printable

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


def container_for(
    url_prefix: str, *, s3_options: dict[str, Any] | None = None
) -> ic.VirtualChunkContainer:
    """The virtual chunk container of a source root (``…/`` terminated)."""
    parts = urlsplit(url_prefix)
    # icechunk's AnyObjectStoreConfig leaves out the HTTP config its containers accept.
    store: ic.AnyObjectStoreConfig | ic.ObjectStoreConfig.Http
    if parts.scheme == "file":
        store = ic.local_filesystem_store(parts.path)
    elif parts.scheme in ("http", "https"):
        store = ic.http_store()
    elif parts.scheme == "s3":
        # Endpoint, region, transport and path style only: the config is saved
        # in the repository, so it must never carry credentials.
        store = s3_settings(s3_options).store_config()
    else:
        raise ConfigurationError(f"unsupported source scheme in {url_prefix!r}")
    return ic.VirtualChunkContainer(url_prefix, store, name=container_name(url_prefix))


def storage_for(
    location: str,
    *,
    s3_options: dict[str, Any] | None = None,
    options: ReadOptions | None = None,
) -> ic.Storage:
    """Icechunk storage of one repository at a local path or an ``s3://`` or ``http(s)://`` URL.

    A published repository (``http(s)://``) is read through
    :mod:`~tessera_vz.core.published` under ``options`` (the reader's
    policy: timeouts, retries, a size cap, no redirect elsewhere).
    """
    parts = urlsplit(location)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigurationError(f"repository location {location!r} names no bucket")
        return s3_settings(s3_options).storage(parts.netloc, parts.path.strip("/"))
    if parts.scheme in ("http", "https"):
        # A published copy on a web server: Icechunk's read-only HTTP storage, pointed
        # at our loopback proxy, which fetches through the boundary.
        from tessera_vz.core.published import proxy

        read = options if options is not None else ReadOptions()
        wait = f"{int(read.policy.worst_case()) + 10}s"
        return ic.http_storage(
            proxy().url_for(location, read), opts={"timeout": wait, "connect_timeout": "5s"}
        )
    if parts.scheme not in ("", "file"):
        raise ConfigurationError(
            f"repository location {location!r}: expected a local path, an s3:// URL or an "
            "http(s):// URL of a published index"
        )
    return ic.local_filesystem_storage(str(Path(parts.path or location).expanduser().resolve()))


def repositories(root: str, s3_options: dict[str, Any] | None = None) -> dict[int, str]:
    """Zone -> repository name (``utm31.icechunk``) under a local or ``s3://`` index root.

    The reader finds an index's zones this way and the indexer writes the
    same list to ``zones.json`` for published copies. A local root that does
    not exist holds none; an S3 listing that fails is a clear error.
    """
    parts = urlsplit(root)
    if parts.scheme == "s3":
        import obstore
        from obstore.exceptions import BaseError as ObstoreError

        store = s3_settings(s3_options).obstore(root.rstrip("/") + "/")
        try:
            listed = obstore.list_with_delimiter(store, None)
        except (ObstoreError, OSError) as exc:  # obstore's own errors; a socket's
            raise ConfigurationError(
                f"cannot list index {root!r}: {str(exc).strip().splitlines()[0]}. Check the "
                "bucket, the endpoint (--s3-endpoint, AWS_ENDPOINT_URL) and credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or --anonymous for a public bucket)"
            ) from None
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in listed["common_prefixes"]]
    else:
        path = Path(parts.path if parts.scheme == "file" else root).expanduser()
        names = os.listdir(path) if path.is_dir() else []
    return {z: n for n in names if (z := zone_of_repo(n)) is not None}


def read_config(base: ic.RepositoryConfig | None = None) -> ic.RepositoryConfig:
    """Repository config tuned for byte-exact reads of virtual chunks.

    Icechunk splits a ranged read into parallel requests and preloads
    coordinate manifests; neither helps a reader that asks for 132 bytes, so
    one request per range and no preloading.
    """
    cfg = base if base is not None else ic.RepositoryConfig.default()
    cfg.caching = ic.CachingConfig(num_chunk_refs=2_000_000, num_snapshot_nodes=500_000)
    # Batched point and window reads hand icechunk thousands of small ranges at
    # once; its default of 10 in flight leaves a loopback mirror mostly idle.
    cfg.get_partial_values_concurrency = 64
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


def with_read_policy(cfg: ic.RepositoryConfig, policy: RetryPolicy) -> ic.RepositoryConfig:
    """Bound every virtual-chunk fetch by the reader's policy: retries, backoff, timeouts.

    Icechunk applies ``StorageSettings.retries`` to virtual chunk fetches too,
    but an HTTP container's timeouts live in its store options, which the
    repository recorded at index time (none). So the reader replaces each
    HTTP container's store, in memory only, with one carrying them: a
    stalled mirror then fails after about ``(retries + 1) * timeout`` seconds
    instead of hanging. Never saved to the repository. (Icechunk 2.3 ignores
    a ``root_certificate`` option here; it trusts a private CA only through
    ``SSL_CERT_FILE``, see ``docs/reliability.md``.)
    """
    old = cfg.storage
    ms = int(policy.timeout * 1000)
    connect_ms = int(policy.connect * 1000)
    cfg.storage = ic.StorageSettings(
        concurrency=old.concurrency if old is not None else None,
        retries=ic.StorageRetriesSettings(
            max_tries=policy.attempts,
            initial_backoff_ms=int(policy.backoff * 1000),
            max_backoff_ms=int(max(policy.backoff, policy.max_backoff) * 1000),
        ),
        timeouts=ic.StorageTimeoutSettings(
            connect_timeout_ms=connect_ms, read_timeout_ms=ms, operation_attempt_timeout_ms=ms
        ),
    )
    opts = {"timeout": f"{ms}ms", "connect_timeout": f"{connect_ms}ms"}
    for prefix, vcc in dict(cfg.virtual_chunk_containers or {}).items():
        if urlsplit(prefix).scheme in ("http", "https"):
            cfg.set_virtual_chunk_container(
                ic.VirtualChunkContainer(prefix, ic.http_store(opts=opts), name=vcc.name)
            )
    return cfg


def with_users_s3(
    cfg: ic.RepositoryConfig, s3_options: dict[str, Any] | None
) -> ic.RepositoryConfig:
    """Read every ``s3://`` container with the user's endpoint, region and transport.

    A repository records each container's store config (endpoint,
    ``allow_http``), and Icechunk uses it with the credentials the reader
    hands over: a crafted repository naming its own endpoint received the
    user's signed ``Authorization`` header and session token. So the reader
    replaces each S3 container's store, in memory only, with the user's own
    S3 settings (the ones its repository storage and our reads use); the
    recorded endpoint is never contacted.
    """
    mine = s3_settings(s3_options).store_config()
    for prefix, vcc in dict(cfg.virtual_chunk_containers or {}).items():
        if urlsplit(prefix).scheme == "s3":
            cfg.set_virtual_chunk_container(ic.VirtualChunkContainer(prefix, mine, name=vcc.name))
    return cfg


def credentials(
    containers: Iterable[str], options: ReadOptions
) -> dict[str, ic.AnyCredential | None]:
    """Authorise the containers a reader trusts (:mod:`~tessera_vz.core.permissions`).

    Remote containers are trusted by default, ``file://`` ones and those on
    loopback or private addresses only with the user's permission;
    ``allowed_sources``, when given, is the only list. Icechunk connects by
    itself, so an ``http(s)`` container's name is resolved here, once
    (tessera-vz's own reads check each connection). ``s3://`` containers get
    the reader's credentials, to be used with the reader's endpoint only
    (:func:`with_users_s3`): anonymous when ``s3_options`` (or
    ``AWS_SKIP_SIGNATURE``) says so, explicit keys when given, else the
    ``AWS_*`` environment; the repository never holds any.
    """
    s3_cred = None
    out: dict[str, ic.AnyCredential | None] = {}
    for prefix in containers:
        scheme = urlsplit(prefix).scheme
        if not authorised(prefix, options):
            log.info("not authorising virtual chunk container %s (not allowed)", printable(prefix))
            continue
        if scheme == "file":
            out[prefix] = ic.credentials.LocalFileSystemAccess
        elif scheme in ("http", "https"):
            if not private_permitted(prefix, options):
                try:
                    check_resolved(prefix)
                except ConfigurationError as exc:
                    log.info("not authorising virtual chunk container %s: %s", prefix, exc)
                    continue
            out[prefix] = ic.credentials.HttpAccess
        elif scheme == "s3":
            s3_cred = s3_cred or s3_settings(options.s3).credentials()
            out[prefix] = s3_cred
    return out
