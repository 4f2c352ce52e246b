"""Serialise writers of one repository on a local file system.

Icechunk keeps a repository's branches and tags in one object that every
commit rewrites. On S3 that rewrite is conditional (``If-Match``), so
concurrent commits to different branches of one repository are safe. A
local file system has no conditional overwrite: icechunk warns that it "is
not safe for concurrent commits", and two processes committing to different
year branches of one zone repository were seen to lose each other's branches
and tags. Units of one zone that write to a local repository therefore take
an exclusive ``flock`` on ``{out}/.utm{zz}.icechunk.lock`` (beside the
repository, never inside it); S3 repositories need no lock.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tessera_vz.core.layout import repo_name

log = logging.getLogger(__name__)


def lock_path(out: str, zone: int) -> Path | None:
    """The lock file of a zone's repository, or ``None`` where none is needed (S3)."""
    parts = urlsplit(out)
    if parts.scheme not in ("", "file"):
        return None
    base = Path(unquote(parts.path) if parts.scheme == "file" else out).expanduser()
    return base / f".{repo_name(zone)}.lock"


@contextmanager
def repo_lock(out: str, zone: int) -> Iterator[None]:
    """Hold the zone repository's write lock (local repositories only).

    Blocks until any other process holding it finishes its commits. The lock
    is an advisory ``flock``: released by the kernel when the holder exits,
    so a killed run never leaves it stuck.
    """
    path = lock_path(out, zone)
    if path is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: nothing to lock with
        log.warning("no flock on this platform; do not index one local zone concurrently")
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        t0 = time.perf_counter()
        fcntl.flock(fd, fcntl.LOCK_EX)
        waited = time.perf_counter() - t0
        if waited > 0.5:
            log.info("waited %.1fs for the write lock of zone %d", waited, zone)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
