"""Shared fixtures: generated tile trees and a real nginx serving them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tls import TestCA, make_test_ca

if TYPE_CHECKING:
    from tessera_vz.testing.s3 import MotoS3


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Give each test its own on-disk caches, beside (not inside) its temp folder.

    Per test, not per session: the single-range memory is keyed by origin
    (``127.0.0.1:PORT``), and a port one test's ``max_ranges 1`` nginx used
    may serve multi-range requests in the next. Not inside ``tmp_path``:
    tests list their folder to prove nothing else was written there.
    """
    monkeypatch.setenv("TESSERA_VZ_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True, scope="session")
def _isolated_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Remembered permissions (core.permissions) stay in the session, never the user's.

    Session-scoped, so module fixtures that index a tree (and so remember
    its source) write there too.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("TESSERA_VZ_CONFIG", str(tmp_path_factory.getbasetemp() / "config"))
    yield
    mp.undo()


def serve(root: Path) -> NginxServer:
    """Start nginx on ``root``; fails (never skips) when nginx is missing."""
    return NginxServer(root).start()


def serve_tls(root: Path, ca: TestCA, **kwargs: Any) -> NginxServer:
    """Start nginx on ``root`` over HTTPS with ``ca``'s server certificate (``test_ca``)."""
    return NginxServer(root, tls=ca, **kwargs).start()


@contextmanager
def indexed_over_https(root: Path, specs: list[Any], ca: TestCA, out: Path) -> Iterator[str]:
    """Serve ``root`` over HTTPS (manifest written from ``specs``), index it into ``out``.

    Yields the server's URL (every tile indexed); the server stops afterwards.
    """
    from tessera_vz.indexer.run import IndexOptions, run_index
    from tessera_vz.testing.tiles import write_manifest

    write_manifest(root, specs)
    server = serve_tls(root, ca)
    try:
        report = run_index(
            IndexOptions(source=server.url, out=str(out), manifest=str(root / "manifest.parquet"))
        )
        assert not report.failed and report.indexed == len(specs)
        yield server.url
    finally:
        server.stop()


@contextmanager
def published_over_https(www: Path, ca: TestCA) -> Iterator[NginxServer]:
    """Serve ``www`` over HTTPS and index its ``tiles/`` (by their manifest) into ``www/index``.

    The index is then published beside the tiles, as a mirror would hold it:
    ``server.url + "index/"`` opens it. Yields the running server.
    """
    from tessera_vz.indexer.run import IndexOptions, run_index

    with NginxServer(www, tls=ca) as server:
        report = run_index(
            IndexOptions(source=server.url + "tiles/", out=str(www / "index"),
                         manifest=str(www / "tiles" / "manifest.parquet"))
        )  # fmt: skip
        assert report.exit_code == 0, report.failed
        yield server


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A CA and a loopback server certificate it signed, for the whole session.

    Clients trust it explicitly: ``ssl.create_default_context(cafile=test_ca.ca_cert)``
    (aiohttp), ``client_options={"root_certificate": test_ca.ca_pem()}`` (obstore).
    """
    return make_test_ca(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture(scope="session")
def https(test_ca: TestCA) -> Iterator[TestCA]:
    """Trust the test CA as a user of a private mirror would: ``SSL_CERT_FILE``.

    tessera-vz's client, obstore and Icechunk all read it (in this process
    and in CLI subprocesses), so HTTPS fixtures need no option that weakens
    TLS, and none is ever written into a repository.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("SSL_CERT_FILE", str(test_ca.ca_cert))
    yield test_ca
    mp.undo()


@pytest.fixture
def nginx_factory() -> Iterator[list[NginxServer]]:
    """Start servers on demand; all are stopped at the end of the test."""
    servers: list[NginxServer] = []
    yield servers
    for s in servers:
        s.stop()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3]:
    """moto's S3 server on a free loopback port, for the whole session.

    Fails (never skips) when ``moto[server]`` is missing: the import is here.
    """
    from tessera_vz.testing.s3 import MotoS3

    with MotoS3() as server:
        yield server


@pytest.fixture
def s3_env(s3_server: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    """Point every S3 client of this test (and its child processes) at ``s3_server``."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server
