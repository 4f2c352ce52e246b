"""A published index is read under the same policy as tiles (issue 19, item 5).

The repository objects of an index published over HTTP (``repo``,
snapshots, manifests, transactions) are fetched through the boundary
(:mod:`tessera_vz.core.published`), never by Icechunk's own HTTP client:
the liar server stalls, claims 4 GiB or redirects elsewhere on them, and
the reader fails on time, in bounded memory, contacting no other origin.
Every request carries one slash. The good case over nginx and TLS is
``tests/test_published.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tessera_vz.core.errors import SourceUnavailableError
from tessera_vz.indexer.run import IndexOptions, run_index
from tessera_vz.reader import open_store
from tessera_vz.testing.liar import LiarServer
from tessera_vz.testing.tiles import make_tree

YEAR = 2024
REPO = "/index/utm31.icechunk/"


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("www-limits")
    make_tree(root / "tiles", bbox=(0.8, 49.8, 1.0, 50.0), years=(YEAR,), bands=2)
    report = run_index(IndexOptions(source=str(root / "tiles"), out=str(root / "index")))
    assert report.exit_code == 0
    return root


@pytest.fixture
def liar(www: Path) -> Iterator[LiarServer]:
    with LiarServer(www) as server:
        yield server


def _info(
    url: str, *extra: str, timeout: float = 60
) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "tessera_vz.cli", "info", url, "--json", *extra],
        capture_output=True, text=True, timeout=timeout, env=dict(os.environ),
    )  # fmt: skip
    return run, time.monotonic() - t0


def test_one_slash_and_the_same_answers(www: Path, liar: LiarServer) -> None:
    local = open_store(str(www / "index"), allow_local_sources=True)
    remote = open_store(liar.url + "index/", allow_local_sources=True)
    assert remote.zones() == local.zones() == [31]
    table, want = remote.tiles(YEAR, 31), local.tiles(YEAR, 31)
    assert list(table.tile.values) == list(want.tile.values)
    lon, lat = 0.863, 49.877
    np.testing.assert_array_equal(remote.point(lon, lat, YEAR), local.point(lon, lat, YEAR))
    targets = [r.target for r in liar.requests()]
    assert any(t.startswith(REPO) for t in targets)
    assert not any("//" in t for t in targets), targets


def test_a_stalling_server_fails_on_time(liar: LiarServer) -> None:
    liar.set_scenario("stall_headers", path=REPO)
    run, took = _info(liar.url + "index/", "--timeout", "2", "--retries", "0")
    assert run.returncode != 0
    assert "timed out" in run.stderr, run.stderr[-2000:]
    assert took < 30, took  # before: past 150 s


#: Runs a command and prints its peak RSS (KiB): measured in a process of its own, because
#: this test process's RUSAGE_CHILDREN already holds every earlier child's peak (chromium,
#: dask workers) in a full run.
PEAK = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(f'peak_kib={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', "
    "file=sys.stderr); sys.exit(r.returncode)"
)


def test_a_huge_content_length_is_refused_before_reading(liar: LiarServer) -> None:
    liar.set_scenario("huge_content_length", path=REPO)
    t0 = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-c", PEAK, sys.executable, "-m", "tessera_vz.cli", "info",
         liar.url + "index/", "--json", "--timeout", "5", "--retries", "0"],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )  # fmt: skip
    took = time.monotonic() - t0
    assert run.returncode != 0
    assert "Content-Length 4294967296" in run.stderr, run.stderr[-2000:]
    peak_kib = int(run.stderr.rsplit("peak_kib=", 1)[1].split()[0])
    assert peak_kib < 1_500_000  # KiB: the 4 GiB were never allocated
    assert took < 30


def test_repository_files_never_follow_a_redirect_to_another_origin(
    www: Path, liar: LiarServer
) -> None:
    with LiarServer(www) as other:
        liar.set_scenario("redirect_other_origin", path=REPO, redirect_to=other.url)
        store = open_store(liar.url + "index/", retries=0)
        with pytest.raises(SourceUnavailableError, match="an origin you have not authorised"):
            store.years()
        assert other.requests() == []
        assert any(r.status == 302 for r in liar.requests())
