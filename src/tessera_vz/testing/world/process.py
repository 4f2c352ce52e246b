"""The world's tile server in a child process, driven over its stdin and stdout.

A child started with ``python -m`` rather than ``multiprocessing``, so it
imports only the server, and its event loop and GIL are its own: the
benchmark measures the indexer and the reader, not their contention with
the server.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Self

from tessera_vz.testing.tls import TestCA


class WorldServer:
    """Serve ``world`` (a :meth:`World.save` file) and ``dataset_dir``'s manifest over HTTPS.

    Parameters
    ----------
    world
        The world's ``.npz``; :meth:`reload` reads it again after it is rewritten.
    dataset_dir
        Where ``manifest.parquet`` is (served as ``{url}manifest.parquet``).
    ca
        The test CA whose server certificate it presents.
    delay
        Seconds added before each answer (0.020: +20 ms per request).
    prefix
        The dataset directory's path on the server (upstream's ``/npy/v1/`` layout).
    port
        Port on 127.0.0.1 (0: a fresh one); an index records its source's URL, port
        included, so serving a kept world again needs the same port.
    """

    def __init__(
        self, world: str | Path, dataset_dir: str | Path, ca: TestCA, *, delay: float = 0.0,
        prefix: str = "/npy/v1/", port: int = 0,
    ) -> None:  # fmt: skip
        self.args = [
            str(world), str(dataset_dir), "--cert", str(ca.server_cert), "--key",
            str(ca.server_key), "--delay", str(delay), "--prefix", prefix, "--port", str(port),
        ]  # fmt: skip
        self._proc: subprocess.Popen[str] | None = None
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives with the child)
        self.url = ""

    def start(self) -> Self:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tessera_vz.testing.world.server", *self.args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )  # fmt: skip
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()
        if not self.url.startswith("https://"):
            self.stop()
            raise RuntimeError(f"the world server did not start: {self.stderr()[-3000:]}")
        return self

    def _ask(self, command: str) -> Any:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError("the world server is not running")
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    def stats(self) -> dict[str, int]:
        """Requests (total and per kind: emb, scales, manifest, other), statuses, bytes."""
        return dict(self._ask("stats"))

    def reset(self) -> None:
        """Zero the counters."""
        self._ask("reset")

    def reload(self) -> None:
        """Read the world file again (new generations and mtimes)."""
        self._ask("reload")

    def set_delay(self, seconds: float) -> None:
        """Seconds added before each answer from now on."""
        self._ask(f"delay {seconds}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin is not None:
                proc.stdin.close()  # the child's command thread ends, and the server stops
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
