"""An on-disk cache of a published repository's immutable objects, and the LRU bound of caches.

Icechunk names snapshots, manifests, chunks and transaction logs by a
random id and never rewrites one, so an object fetched once is the same
forever: a later process (``open_tile`` on a published index, the dataset
identity every sample reads from ``main``) takes it from here instead of
the web server. Keyed by the object's URL; files appear by rename (a
reader sees a whole file or none) and go least recently used first
(:func:`prune`, shared with the tiles-table cache), within
:data:`MAX_BYTES` (``$TESSERA_VZ_CACHE_MAX_MB`` sets it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

from tessera_vz.core.files import atomic_write_bytes, cache_dir

log = logging.getLogger(__name__)

#: Most files a cache folder keeps.
MAX_FILES = 4096
#: Most bytes a cache folder keeps, unless ``$TESSERA_VZ_CACHE_MAX_MB`` says otherwise.
MAX_BYTES = 256 * 1024 * 1024
#: Where the objects go below the cache directory.
FOLDER = "repository-objects"
#: Saves between two prunes (the first save of a process prunes).
PRUNE_EVERY = 64
_SAVED = 0


def _path(url: str) -> Path | None:
    base = cache_dir()
    if base is None:
        return None
    digest = hashlib.sha256(url.encode()).hexdigest()
    return base / FOLDER / digest[:2] / digest[2:]


def load(url: str) -> bytes | None:
    """The cached object at ``url``, or ``None``."""
    path = _path(url)
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    touch(path)
    return data


def save(url: str, data: bytes) -> None:
    """Keep ``data`` as the object at ``url``; a failure only costs a later miss."""
    path = _path(url)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        log.info("could not cache %s: %s", url, exc)
        return
    global _SAVED
    _SAVED += 1
    if (_SAVED - 1) % PRUNE_EVERY == 0:  # a listing of thousands of files is not free
        prune(path.parent.parent, "*/*", MAX_FILES, keep=path)


def max_bytes(default: int = MAX_BYTES) -> int:
    """``$TESSERA_VZ_CACHE_MAX_MB`` in bytes, else ``default``."""
    text = os.environ.get("TESSERA_VZ_CACHE_MAX_MB", "")
    try:
        return max(0, int(float(text) * 1024 * 1024)) if text.strip() else default
    except ValueError:
        log.warning("ignoring TESSERA_VZ_CACHE_MAX_MB=%r (not a number of MB)", text)
        return default


def touch(path: Path) -> None:
    """Mark a cache file used now (its mtime is what "recently used" means)."""
    with contextlib.suppress(OSError):  # a read-only cache: recency is only a hint
        os.utime(path)


def prune(folder: Path, pattern: str, max_files: int, keep: Path | None = None) -> int:
    """Delete the least recently used files matching ``pattern`` beyond the bounds; how many.

    At most ``max_files`` files and :func:`max_bytes` bytes stay; ``keep``
    (the file just written) is never deleted, even alone over the byte bound.
    """
    entries = []
    for path in folder.glob(pattern):
        try:
            st = path.stat()
        except OSError:
            continue  # removed meanwhile by another process
        entries.append((st.st_mtime, st.st_size, path))
    entries.sort(key=lambda e: e[0], reverse=True)
    budget, removed, count, total = max_bytes(), 0, 0, 0
    for _, size, path in entries:
        count, total = count + 1, total + size
        if path == keep or (count <= max_files and total <= budget):
            continue
        try:
            path.unlink(missing_ok=True)
            removed += 1
        except OSError as exc:
            log.info("could not remove cache file %s: %s", path, exc)
    if removed:
        log.info("cache: removed %d least recently used file(s) from %s", removed, folder)
    return removed
