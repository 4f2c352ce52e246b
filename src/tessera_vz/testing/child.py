"""A test server in a child process, driven by lines on its stdin and answered in JSON.

Servers that stand in for a link or a mirror (the latency proxy of the
benchmarks, the simulated world's tile server) run in their own process, so
their event loop never competes for the GIL with the client being measured.
The child prints its URL on its first stdout line, then answers each command
line with one JSON line; closing its stdin stops it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
from typing import Any, Self


class ChildServer:
    """Start ``argv``, read its URL, send it commands; a context manager.

    Parameters
    ----------
    argv
        The child's command line (``[sys.executable, "-m", ...]``).
    what
        What it is, for the error raised when it does not start.
    """

    def __init__(self, argv: list[str], what: str) -> None:
        self.argv = argv
        self.what = what
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""
        #: The child's stderr (asyncio logs a callback's exception there).
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives with the child)

    def start(self) -> Self:
        self._proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()
        if not self.url.startswith(("http://", "https://")):
            self.stop()
            raise RuntimeError(f"the {self.what} did not start: {self.stderr()[-3000:]}")
        return self

    def ask(self, command: str) -> Any:
        """Send one command line; the child's JSON answer."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError(f"the {self.what} is not running")
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    def stop(self) -> None:
        """Stop the child (its log stays readable until this object goes)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin is not None:
                proc.stdin.close()  # the child's command loop ends, and the server stops
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stderr(self) -> str:
        """What the child wrote to stderr so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
