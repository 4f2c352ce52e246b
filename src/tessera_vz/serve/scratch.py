"""Where the viewer writes downloads before sending them, removed on every exit path.

Each viewer process owns one run folder under ``$TMPDIR/tessera-vz-serve-<user>/``
and holds its lock (:func:`tessera_vz.core.files.file_lock`, released by the
kernel when the process dies, however it dies). A download is written in a
folder of its own inside it, removed once the answer is sent (a Starlette
``BackgroundTask``) or failed. The run folder goes at shutdown; and because
a double Ctrl-C or a kill skips shutdown, each viewer starting removes the
run folders whose lock nobody holds any more.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.files import file_lock

log = logging.getLogger(__name__)


def scratch_root() -> Path:
    """``$TMPDIR/tessera-vz-serve-<user>``: one folder per user, so nobody sweeps another's."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in user)
    return Path(tempfile.gettempdir()) / f"tessera-vz-serve-{safe}"


class Scratch:
    """The viewer's run folder: :meth:`open` at startup, :meth:`close` at shutdown."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or scratch_root()
        self.run: Path | None = None
        self._held = ExitStack()

    def open(self) -> Path:
        """Sweep run folders of viewers that are gone, then make and lock this one's."""
        if self.run is not None:
            return self.run
        self.root.mkdir(mode=0o700, exist_ok=True)
        if self.root.is_symlink() or not self.root.is_dir():
            raise ConfigurationError(f"{self.root} is not a folder of ours; remove it")
        self.sweep()
        run = self.root / f"run-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._held.enter_context(file_lock(run.with_suffix(".lock")))
        run.mkdir(mode=0o700)
        self.run = run
        return run

    def sweep(self) -> int:
        """Remove the run folders no live viewer holds; how many were removed."""
        removed = 0
        for lock in sorted(self.root.glob("run-*.lock")):
            run = lock.with_suffix("")
            if run == self.run:
                continue
            try:
                with file_lock(lock, wait=False):
                    shutil.rmtree(run, ignore_errors=True)
                    lock.unlink(missing_ok=True)
            except ConfigurationError:
                continue  # a viewer still running holds it
            removed += 1
        if removed:
            log.info("removed %d download folder(s) left by viewers that did not stop", removed)
        return removed

    def new(self) -> Path:
        """A fresh folder for one download (inside the run folder)."""
        return Path(tempfile.mkdtemp(prefix="region-", dir=self.open()))

    def close(self) -> None:
        """Remove the run folder and release its lock."""
        if self.run is not None:
            shutil.rmtree(self.run, ignore_errors=True)
            self.run.with_suffix(".lock").unlink(missing_ok=True)
            self.run = None
        self._held.close()
