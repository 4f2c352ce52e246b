"""Which manifest a run reads: ``--manifest``, else the one in SOURCE's dataset directory.

Upstream publishes each dataset as a directory holding its own
``manifest.parquet`` beside the year directories (``npy/v1.1-cam/manifest.parquet``,
written by geotessera's ``s3scan``, ``geotessera/registry_cli.py``), so SOURCE
itself says which tiles exist: ``tessera-vz index https://…/npy/v1.1-cam/``
needs no ``--manifest``. A relative ``--manifest`` that is no local file is
looked up under SOURCE (``--manifest manifest.parquet``). A local or S3 tree
without a manifest is listed instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.parquet as pq

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.indexer.manifest import ManifestNotFoundError, open_manifest
from tessera_vz.indexer.roots import SourceRoot
from tessera_vz.indexer.run_options import IndexOptions, read_options, source_options

log = logging.getLogger(__name__)

#: The manifest's name in a dataset directory, as upstream writes it.
MANIFEST_NAME = "manifest.parquet"


def manifest_location(manifest: str | None, root: SourceRoot) -> tuple[str, bool]:
    """Where the manifest is, and whether it was named by the user.

    A relative ``--manifest`` that is no local file names a file under SOURCE.
    """
    if manifest is None:
        return root.url_of(MANIFEST_NAME), False
    local = Path(manifest).expanduser()
    if urlsplit(manifest).scheme or local.exists() or local.is_absolute():
        return manifest, True
    try:
        return root.url_of(manifest.removeprefix("./")), True
    except ValueError as exc:
        raise ConfigurationError(
            f"--manifest {manifest!r} is no local file, nor a path under SOURCE: {exc}"
        ) from None


def find_manifest(opts: IndexOptions, root: SourceRoot) -> tuple[pq.ParquetFile | None, str]:
    """The manifest a run reads (``None``: list the tree) and its location.

    A named manifest that cannot be read is an error; SOURCE's own
    ``manifest.parquet`` is used when it is there. Over HTTP(S), where
    nothing can be listed, its absence is an error saying what to pass.
    """
    where, named = manifest_location(opts.manifest, root)
    try:
        found = open_manifest(where, options=source_options(opts), read=read_options(opts))
    except ManifestNotFoundError:
        if named:
            raise
        if root.is_http:
            raise ConfigurationError(
                f"source {root.url} is served over {root.scheme.upper()}, which has no directory "
                f"listing, and has no {MANIFEST_NAME}; pass --manifest (the upstream "
                "manifest.parquet) to say which tiles exist"
            ) from None
        return None, root.url
    except ConfigurationError as exc:
        if named:
            raise
        raise ConfigurationError(f"{exc}; or pass --manifest to name another") from None
    if not named:
        log.info("reading the manifest of the dataset directory, %s", where)
    return found, where
