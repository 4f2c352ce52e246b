"""Serialise writers of one repository on a local file system.

Icechunk keeps a repository's branches and tags in one object that every
commit rewrites. On S3 that rewrite is conditional (``If-Match``), so
concurrent commits to different branches of one repository are safe. A
local file system has no conditional overwrite: icechunk warns that it "is
not safe for concurrent commits", and two processes committing to different
year branches of one zone repository were seen to lose each other's branches
and tags. Units of one zone that write to a local repository therefore hold
the lock (:func:`~tessera_vz.core.files.file_lock`) of
``{out}/.utm{zz}.icechunk.lock`` (beside the repository, never inside it);
S3 repositories need no lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tessera_vz.core.files import file_lock
from tessera_vz.core.layout import repo_name


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

    Blocks until any other process holding it finishes its commits; a
    killed holder never leaves it stuck.
    """
    path = lock_path(out, zone)
    if path is None:
        yield
        return
    with file_lock(path):
        yield
