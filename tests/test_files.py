"""The one atomic writer and the one lock (``tessera_vz.core.files``).

Every output is written under a hidden name beside its target and renamed
into place only when complete: a failure (Ctrl-C included) leaves the
target as it was and nothing behind; files get the umask's permissions.
The lock excludes other processes and is released when its holder dies.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tessera_vz.core.errors import ConfigurationError
from tessera_vz.core.files import atomic_path, atomic_write_bytes, file_lock, hidden_beside
from tessera_vz.indexer.locks import lock_path


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_file_appears_whole_with_the_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    old = os.umask(0o027)
    try:
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.json.")
            tmp.write_bytes(b"{}")
            assert not target.exists()  # nothing at the target until the block succeeds
    finally:
        os.umask(old)
    assert target.read_bytes() == b"{}"
    assert target.stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600
    assert _names(tmp_path) == ["out.json"]


def test_a_failure_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    for error in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(error)), atomic_path(target) as tmp:
            tmp.write_text("half")
            raise error
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["state.json"]


def test_atomic_write_bytes_replaces_and_sets_a_mode(tmp_path: Path) -> None:
    target = tmp_path / "zones.json"
    target.write_bytes(b"before")
    old = os.umask(0o077)
    try:
        atomic_write_bytes(target, b"after", mode=0o644)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"after"
    assert target.stat().st_mode & 0o777 == 0o644
    assert _names(tmp_path) == ["zones.json"]


def test_a_directory_replaces_a_directory(tmp_path: Path) -> None:
    """A Zarr store is a folder: the new one takes the old one's place, the old one goes."""
    target = tmp_path / "r.zarr"
    (target / "old").mkdir(parents=True)
    with atomic_path(target, kind="partial.zarr") as tmp:
        (tmp / "new").mkdir(parents=True)
        assert tmp.name.endswith(".partial.zarr")
    assert _names(target) == ["new"]
    assert _names(tmp_path) == ["r.zarr"]
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        (tmp / "newer").mkdir(parents=True)
        raise ValueError("failed half-way")
    assert _names(target) == ["new"]
    assert _names(tmp_path) == ["r.zarr"]


def test_hidden_names_differ(tmp_path: Path) -> None:
    names = {hidden_beside(tmp_path / "x.tif", "cog.tif") for _ in range(100)}
    assert len(names) == 100
    assert all(n.name.startswith(".x.tif.") and n.name.endswith(".cog.tif") for n in names)


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from tessera_vz.core.files import file_lock
    with file_lock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.readline()
    """
)


def test_the_lock_excludes_another_process_until_it_ends(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / ".thing.lock"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigurationError, match="another run holds it"):  # noqa: SIM117
            with file_lock(lock, wait=False, busy="another run holds it"):
                pytest.fail("the lock was taken twice")
        holder.kill()  # a holder that dies releases the lock
        holder.wait(timeout=30)
    finally:
        holder.kill()
    with file_lock(lock, wait=False):
        assert lock.exists()
    assert lock.exists()  # kept, so waiters share one file


def test_the_repository_lock_file_sits_beside_the_repository(tmp_path: Path) -> None:
    assert lock_path(str(tmp_path), 31) == tmp_path / ".utm31.icechunk.lock"
    assert lock_path(f"file://{tmp_path}", 7) == tmp_path / ".utm07.icechunk.lock"
    assert lock_path("s3://bucket/index", 31) is None
