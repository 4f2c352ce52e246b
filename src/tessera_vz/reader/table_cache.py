"""An on-disk cache of each year's tiles table, keyed by snapshot id.

The table is the only repo data a point lookup needs besides the two chunk
manifests, and it never changes for a given snapshot, so a new process can
skip reading it. A new index run makes a new snapshot id, which simply
misses the cache: nothing is ever stale.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import xarray as xr

from tessera_vz.core.files import atomic_path, cache_dir

log = logging.getLogger(__name__)


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
