"""Find the zone repositories of an index, and open each with only the sources trusted.

An index is one ``utm{zz}.icechunk`` repository per UTM zone under a root:
a local directory or an ``s3://`` prefix is listed (:func:`discover_zones`);
a web server cannot be listed, so an index published over ``http(s)://``
names its zones in a small file at its root (:func:`published_zones`).
Everything a repository records is untrusted: :func:`open_repository`
authorises only the virtual chunk containers the reader's options trust,
and registers the same roots with the byte boundary, so Icechunk's reads
and ours refuse the same sources.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import icechunk as ic

from tessera_vz.core.boundary import SourceFiles
from tessera_vz.core.errors import ConfigurationError, SourceNotFoundError
from tessera_vz.core.layout import ZONE_LIST, parse_zone_list
from tessera_vz.core.loop import sync
from tessera_vz.core.options import ReadOptions
from tessera_vz.core.permissions import authorised
from tessera_vz.core.published import published_errors
from tessera_vz.core.repos import (
    credentials,
    read_config,
    repositories,
    storage_for,
    with_read_policy,
    with_users_s3,
)

log = logging.getLogger(__name__)


def published_zones(root: str, options: ReadOptions) -> dict[int, str]:
    """Zone -> repository URL of an index published on a web server, from its zone list."""
    base = root.rstrip("/") + "/"
    # The user named this URL: it may be on their own network.
    files = SourceFiles([base], replace(options, allow_private_sources=True))
    url = base + ZONE_LIST
    try:
        data = sync(files.fetch(url, "reading the index's zone list", limit=1 << 20))
        repos = parse_zone_list(json.loads(data))
    except SourceNotFoundError:
        raise ConfigurationError(
            f"{url} not found: a published index needs its {ZONE_LIST} (any `tessera-vz index` "
            "run writes it at the --out root; copy the whole folder, zones.json included)"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{url} is not a tessera-vz zone list: {exc}") from None
    if not repos:
        raise ConfigurationError(f"{url} lists no zone repositories")
    return {z: base + name for z, name in repos.items()}


def discover_zones(root: str, options: ReadOptions) -> dict[int, str]:
    """Zone -> repository location of every zone repository under ``root``.

    Raises :class:`ConfigurationError` when ``root`` holds none (or, for a
    local path, is not a directory): the user named the wrong folder.
    """
    parts = urlsplit(root)
    if parts.scheme in ("http", "https"):
        return published_zones(root, options)
    if parts.scheme == "s3":
        base = root.rstrip("/")
    else:
        path = Path(parts.path if parts.scheme == "file" else root).expanduser()
        if not path.is_dir():
            raise ConfigurationError(
                f"index {root!r} is not a directory; expected the --out of `tessera-vz index`"
            )
        base = str(path.resolve())
    zones = {z: f"{base}/{n}" for z, n in repositories(root, options.s3).items()}
    if not zones:
        raise ConfigurationError(
            f"no zone repositories (utm??.icechunk) under {root!r}; run `tessera-vz index` first"
        )
    return zones


def open_repository(
    location: str, zone: int, options: ReadOptions, files: SourceFiles
) -> ic.Repository:
    """A zone's repository, opened with the virtual chunk containers the user trusts only.

    The roots authorised are also allowed in ``files`` (with the user's
    ``allowed_sources``, redirect targets such as a CDN behind a mirror),
    so tessera-vz's own reads trust exactly what Icechunk's do.
    """
    storage = storage_for(location, s3_options=options.s3, options=options)
    tuned = with_read_policy(read_config(), options.policy)
    # One open (Icechunk fetches the repository's info once), no chunk access
    # authorised; then the containers it records are judged and the same
    # repository reopened with those trusted (a reopen fetches nothing). A
    # separate ``fetch_config`` first cost one more round trip for the same object.
    with published_errors(location):
        bare = ic.Repository.open(storage, config=tuned)
    cfg = with_read_policy(read_config(bare.config), options.policy)
    cfg = with_users_s3(cfg, options.s3)
    wanted = list((cfg.virtual_chunk_containers or {}).keys())
    trusted = [p for p in wanted if authorised(p, options)]
    # Icechunk connects by itself: its containers on private addresses are left out
    # at open; our own reads check the address of every connection instead.
    creds = credentials(trusted, options)
    for prefix in wanted:
        if prefix not in creds:
            log.info("not authorising source %s of zone %d for Icechunk", prefix, zone)
    files.allow(trusted)
    if options.allowed_sources is not None:
        # Redirect targets the user authorised (a CDN behind the mirror).
        files.allow(options.allowed_sources)
    with published_errors(location):
        return bare.reopen(config=cfg, authorize_virtual_chunk_access=creds or None)


def containers(location: str, options: ReadOptions) -> list[str]:
    """Source URL prefixes a zone's repository wants to read from (trusted or not)."""
    with published_errors(location):
        cfg = ic.Repository.fetch_config(
            storage_for(location, s3_options=options.s3, options=options)
        )
    return sorted((cfg.virtual_chunk_containers or {}).keys()) if cfg else []
