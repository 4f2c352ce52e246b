"""The world's tile server in a child process (:class:`~tessera_vz.testing.child.ChildServer`).

Started with ``python -m`` rather than ``multiprocessing``, so it imports
only the server, and its event loop and GIL are its own: the benchmark
measures the indexer and the reader, not their contention with the server.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tessera_vz.testing.child import ChildServer
from tessera_vz.testing.tls import TestCA


class WorldServer(ChildServer):
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
        server = [str(world), str(dataset_dir), "--cert", str(ca.server_cert)]
        server += ["--key", str(ca.server_key), "--delay", str(delay), "--prefix", prefix]
        server += ["--port", str(port)]
        argv = [sys.executable, "-m", "tessera_vz.testing.world.server", *server]
        super().__init__(argv, "world server")

    def stats(self) -> dict[str, int]:
        """Requests (total and per kind: emb, scales, manifest, other), statuses, bytes."""
        return dict(self.ask("stats"))

    def reset(self) -> None:
        """Zero the counters."""
        self.ask("reset")

    def reload(self) -> None:
        """Read the world file again (new generations and mtimes)."""
        self.ask("reload")

    def set_delay(self, seconds: float) -> None:
        """Seconds added before each answer from now on."""
        self.ask(f"delay {seconds}")
