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
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from platformdirs import user_cache_dir

from tessera_vz.core.errors import ConfigurationError

log = logging.getLogger(__name__)

#: Waiting longer than this for a lock is worth a line in the log.
WAIT_WORTH_LOGGING = 0.5
#: Seconds a failed write's partial output is given to stop changing, and at most
#: to be removed (writer threads finishing their last chunk after a Ctrl-C).
REMOVE_SETTLE, REMOVE_PATIENCE = 0.1, 10.0


def probe_writable(folder: Path, target: str) -> None:
    """A file can be created in ``folder`` (tried, then removed), else one line saying why.

    ``target`` is what the user asked to write, named in the message.
    """
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tessera-vz-probe-"):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write {target!r}: the folder {str(folder)!r} is not writable "
            f"({exc.strerror or exc}); choose a folder you can write to, or change its "
            "permissions"
        ) from None


def check_output_folder(path: str, flag: str) -> None:
    """An output folder (``index --out``, ``catalog --out``) can be created and written.

    Checked before any work, so a folder that cannot be written is one line
    and exit code 2, not an errno after minutes of reading. The folder may
    not exist yet (it is created): then its nearest existing parent must be
    a writable folder. URLs other than ``file://`` (``s3://``) are left to
    their writer.
    """
    parts = urlsplit(path)
    if parts.scheme not in ("", "file") or (parts.scheme == "" and "://" in path):
        return
    target = Path(unquote(parts.path) if parts.scheme == "file" else path).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigurationError(
            f"{flag} {path!r} is a file, not a folder; give a folder (it is created if missing)"
        )
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigurationError(
            f"{flag} {path!r}: {str(existing)!r} is a file, so no folder can be made under it"
        )
    probe_writable(existing, path)


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


def inside(directory: str | Path, *names: str) -> Path:
    """``directory/name/…``, refused (``ValueError``) unless it stays inside ``directory``.

    Names that come from an index (tile names, years, zones) become file
    names in a folder the user chose. Each must be one plain segment (no
    ``/`` or ``\\``, not empty, ``.`` or ``..``, no control character), and
    the path, resolved (symlinks followed), must still lie under the
    resolved ``directory``: two checks, so neither a crafted name nor a
    link planted in the output folder carries a write elsewhere.
    """
    base = Path(directory)
    for name in names:
        if (
            not isinstance(name, str)
            or name in ("", ".", "..")
            or any(c in name for c in "/\\")
            or any(ord(c) < 32 or ord(c) == 127 for c in name)
        ):
            raise ValueError(
                f"{str(name)[:80]!r} is not a plain file name; nothing is written outside {base}"
            )
    path = base.joinpath(*names)
    root = base.resolve()
    if not path.resolve().is_relative_to(root):
        raise ValueError(f"{path} resolves outside {root}; not written")
    return path


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
    """Delete a file or directory if it exists (cleaning up after a failed write).

    On Ctrl-C the main thread gets here while writer threads (dask's, zarr's)
    may still be finishing the chunk they hold, and a late chunk write
    recreates its folders: so delete, give them a moment, and delete again
    until the path stays gone (for at most :data:`REMOVE_PATIENCE` seconds).
    """
    deadline = time.monotonic() + REMOVE_PATIENCE
    while True:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        time.sleep(REMOVE_SETTLE)
        if not os.path.lexists(path):
            return
        if time.monotonic() > deadline:
            log.warning("could not remove the partial output %s; delete it by hand", path)
            return


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
