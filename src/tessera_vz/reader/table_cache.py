"""An on-disk cache of each year's tiles table, keyed by snapshot id.

The table is the only repo data a point lookup needs besides the two chunk
manifests, and it never changes for a given snapshot, so a new process can
skip reading it. A new index run makes a new snapshot id, which simply
misses the cache: nothing is ever stale.

Every index opened and every re-run adds a file, so the cache is bounded
(:data:`MAX_FILES` files and :data:`~tessera_vz.core.object_cache.MAX_BYTES`
bytes; ``$TESSERA_VZ_CACHE_MAX_MB`` sets the latter): after each save the
least recently used files go. A hit touches its file's mtime, which is
what "recently used" means here. Files appear by rename and go by one
unlink, so a concurrent reader either reads a whole file or misses.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import xarray as xr

from tessera_vz.core import object_cache
from tessera_vz.core.files import atomic_path, cache_dir

log = logging.getLogger(__name__)

#: Most table files kept (a 7,000-tile year is about 0.5 MB).
MAX_FILES = 512


def _path(repo_location: str, snapshot: str) -> Path | None:
    base = cache_dir()
    if base is None:
        return None
    digest = hashlib.sha256(repo_location.encode()).hexdigest()[:16]
    return base / "tables" / digest / f"{snapshot}.npz"


def load(repo_location: str, snapshot: str) -> xr.Dataset | None:
    """The cached table of a snapshot, or ``None``."""
    path = _path(repo_location, snapshot)
    if path is None or not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            cols = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable table cache %s: %s", path, exc)
        return None
    object_cache.touch(path)
    tile = cols.pop("tile")
    return xr.Dataset({k: ("tile", v) for k, v in cols.items()}, coords={"tile": tile})


def save(repo_location: str, snapshot: str, table: xr.Dataset) -> None:
    """Store a table for later processes; failures only cost a cache miss."""
    path = _path(repo_location, snapshot)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {str(k): np.asarray(table[k].values) for k in table.data_vars}
        arrays["tile"] = np.asarray(table["tile"].values).astype(str)
        with atomic_path(path) as tmp, open(tmp, "xb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
    except OSError as exc:
        log.info("could not write table cache %s: %s", path, exc)
        return
    prune(path.parent.parent, keep=path)


def prune(tables: Path, keep: Path | None = None) -> int:
    """Delete the least recently used table files beyond the bounds; how many went.

    ``keep`` (the file just written) is never deleted, even alone over the byte bound.
    """
    return object_cache.prune(tables, "*/*.npz", MAX_FILES, keep)
