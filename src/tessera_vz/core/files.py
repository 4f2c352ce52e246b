"""Local files written whole or not at all, and the one inter-process lock.

Every output of tessera-vz (a region's COG or Zarr store, a points table,
catalog files, the zone list, the tables cache) is written under a hidden
name beside its target and renamed into place only once complete
(:func:`atomic_path`), so a reader never sees half a file and an
interrupted run leaves nothing that looks finished. The hidden name is
only chosen, never created here (unlike ``mkstemp``), so the writer creates
the file and it gets the permissions of the user's umask, not 0600.

Writers that must not run at once (two index runs committing to one local
repository, two catalog runs writing one folder) take :func:`file_lock`:
an advisory lock from the ``filelock`` package (``flock`` on POSIX, the
Windows API there, a lock file as a last resort), released by the kernel
when its holder dies. Locking is never skipped.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from platformdirs import user_cache_dir

from tessera_vz.core.errors import ConfigurationError

log = logging.getLogger(__name__)

#: Waiting longer than this for a lock is worth a line in the log.
WAIT_WORTH_LOGGING = 0.5


def cache_dir() -> Path | None:
    """Where tessera-vz keeps what later runs reuse (tables, single-range origins).

    ``$TESSERA_VZ_CACHE``, else the user cache directory (platformdirs);
    ``off`` (or empty, ``0``, ``none``) disables every on-disk cache.
    """
    env = os.environ.get("TESSERA_VZ_CACHE")
    if env is not None and env.lower() in ("", "0", "off", "none"):
        return None
    return Path(env) if env else Path(user_cache_dir("tessera-vz"))


def hidden_beside(target: str | Path, kind: str = "tmp") -> Path:
    """An unused hidden name beside ``target``: same file system, so a rename is atomic.

    ``.{name}.{pid}.{random}.{kind}``; ``kind`` says what the file is
    (``partial``, ``cog.tif``) and keeps a suffix a writer may go by.
    """
    path = Path(target)
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.{kind}"


@contextmanager
def atomic_path(
    target: str | Path, *, kind: str = "tmp", mode: int | None = None
) -> Iterator[Path]:
    """A hidden path beside ``target`` to write; renamed over ``target`` when the block succeeds.

    The body writes a file (or a directory, such as a Zarr store) at the
    yielded path. On success it replaces ``target`` in one rename (a
    directory target is moved aside first, then deleted); on any failure,
    Ctrl-C included, whatever was written is removed and ``target`` is left
    as it was.

    Parameters
    ----------
    target
        The file or directory to produce; its folder must exist.
    kind
        The end of the hidden name (see :func:`hidden_beside`).
    mode
        Permissions to give the result (e.g. ``0o644`` for a file a web
        server publishes); default: as created, i.e. the user's umask.
    """
    final = Path(target)
    tmp = hidden_beside(final, kind)
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
        _replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(target: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``target`` through :func:`atomic_path` (a reader never sees half)."""
    with atomic_path(target, mode=mode) as tmp, open(tmp, "xb") as f:
        f.write(data)


def _replace(tmp: Path, final: Path) -> None:
    """Move ``tmp`` over ``final``; a directory in the way is renamed aside, then deleted."""
    if not (tmp.is_dir() and final.is_dir() and not final.is_symlink()):
        os.replace(tmp, final)
        return
    old = hidden_beside(final, "old")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove(path: Path) -> None:
    """Delete a file or directory if it exists (cleaning up after a failed write)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def file_lock(path: str | Path, *, wait: bool = True, busy: str | None = None) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` (the file is created if missing, and kept).

    Parameters
    ----------
    path
        The lock file; its folder is created if missing.
    wait
        Wait for another holder to finish (default), or fail at once.
    busy
        The message of the :class:`ConfigurationError` raised when
        ``wait=False`` and another process holds the lock.

    Raises
    ------
    ConfigurationError
        ``wait=False`` and the lock is held elsewhere.
    """
    from filelock import FileLock, Timeout

    lock_file = Path(path)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, blocking=wait)
    t0 = time.perf_counter()
    try:
        lock.acquire()
    except Timeout:
        raise ConfigurationError(
            busy or f"{lock_file} is locked by another process; wait for it to finish"
        ) from None
    waited = time.perf_counter() - t0
    if waited > WAIT_WORTH_LOGGING:
        log.info("waited %.1fs for the lock %s", waited, lock_file)
    try:
        yield
    finally:
        lock.release()
