"""Reading over HTTPS from a test CA, and what the clients do with redirects.

Real mirrors are HTTPS, so the read path is tested over TLS. Each client
takes its trusted roots its own way; these tests pin down, against a real
nginx serving HTTPS with a test CA, which way works for which client, and
that without the CA each one refuses the server (a test CA that everything
trusted by accident would prove nothing).

They also document two behaviours of Icechunk 2.3's HTTP virtual chunk
fetch and obstore's ``HTTPStore`` the reader's HTTP boundary has to design
around: ``http_store(opts={"root_certificate": ...})`` is silently ignored
by Icechunk, and both clients follow a redirect to another origin and hand
back that origin's bytes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import icechunk as ic
import numpy as np
import obstore
import pytest
import zarr
from obstore.store import HTTPStore

from tessera_vz.testing.liar import LiarServer
from tessera_vz.testing.nginx import NginxServer
from tessera_vz.testing.tls import TestCA, client_context

from .conftest import serve_tls

PATH = "sub/dir/tile.npy"
OFFSET, LENGTH = 1000, 100


@pytest.fixture(autouse=True)
def _only_explicit_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests say exactly which CA each client trusts; the session's
    ``SSL_CERT_FILE`` (set by the ``https`` fixture of other modules) must
    not trust it for them."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls-tree")
    (root / PATH).parent.mkdir(parents=True)
    (root / PATH).write_bytes(os.urandom(20_000))
    return root


@pytest.fixture(scope="module")
def https(tree: Path, test_ca: TestCA) -> Iterator[NginxServer]:
    server = serve_tls(tree, test_ca)
    yield server
    server.stop()


def _expected(tree: Path) -> bytes:
    return (tree / PATH).read_bytes()


def _no_retry_store(url: str, root_certificate: str | None = None) -> HTTPStore:
    """An obstore HTTP store that fails at once (its default retries a bad certificate 10 times)."""
    return HTTPStore.from_url(
        url,
        client_options={"root_certificate": root_certificate} if root_certificate else None,
        retry_config={"max_retries": 0, "retry_timeout": dt.timedelta(seconds=5)},
    )


def test_ca_certificate_names_loopback(https: NginxServer, test_ca: TestCA) -> None:
    """The server certificate verifies for 127.0.0.1 and localhost, against the CA only."""
    import socket

    ctx = client_context(test_ca)
    for name in ("127.0.0.1", "localhost"):
        with (
            socket.create_connection(("127.0.0.1", https.port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=name) as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with (
        socket.create_connection(("127.0.0.1", https.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError, match=r"Hostname mismatch|doesn't match"),
    ):
        ctx.wrap_socket(raw, server_hostname="example.org")


def test_nginx_tls_url_and_plain_default(tree: Path, https: NginxServer) -> None:
    assert https.url.startswith("https://127.0.0.1:")
    with NginxServer(tree) as plain:
        assert plain.url.startswith("http://127.0.0.1:")


def test_nginx_tls_keeps_keep_alive_log_and_max_ranges(
    tree: Path, https: NginxServer, test_ca: TestCA
) -> None:
    import http.client

    data = _expected(tree)
    conn = http.client.HTTPSConnection(
        "127.0.0.1", https.port, timeout=10, context=client_context(test_ca)
    )
    https.clear_log()
    for rng in ("bytes=0-9", "bytes=10-19,30-39"):
        conn.request("GET", "/" + PATH, headers={"Range": rng})
        resp = conn.getresponse()
        assert resp.status == 206
        resp.read()
    conn.close()
    first, second = https.requests(min_count=2)
    assert first["connection"] == second["connection"]
    assert (first["connection_requests"], second["connection_requests"]) == (1, 2)
    assert second["range"] == "bytes=10-19,30-39"
    one_range = serve_tls(tree, test_ca, max_ranges=1)
    try:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", one_range.port, timeout=10, context=client_context(test_ca)
        )
        conn.request("GET", "/" + PATH, headers={"Range": "bytes=10-19,30-39"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, data)
        conn.close()
    finally:
        one_range.stop()


def test_aiohttp_reads_over_tls_with_the_ca_only(
    tree: Path, https: NginxServer, test_ca: TestCA
) -> None:
    async def fetch(ctx: ssl.SSLContext | None) -> tuple[int, bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                https.url + PATH,
                headers={"Range": f"bytes={OFFSET}-{OFFSET + LENGTH - 1}"},
                ssl=ctx if ctx is not None else True,
            ) as resp,
        ):
            return resp.status, await resp.read()

    ctx = ssl.create_default_context(cafile=str(test_ca.ca_cert))
    status, body = asyncio.run(fetch(ctx))
    assert status == 206
    assert body == _expected(tree)[OFFSET : OFFSET + LENGTH]
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        asyncio.run(fetch(None))
    logged = https.requests(min_count=1)
    assert logged[-1]["range"] == f"bytes={OFFSET}-{OFFSET + LENGTH - 1}"
    assert logged[-1]["status"] == 206


def test_obstore_reads_over_tls_with_root_certificate(
    tree: Path, https: NginxServer, test_ca: TestCA
) -> None:
    store = _no_retry_store(https.url, root_certificate=test_ca.ca_pem())
    got = obstore.get_range(store, PATH, start=OFFSET, end=OFFSET + LENGTH)
    assert bytes(got) == _expected(tree)[OFFSET : OFFSET + LENGTH]
    with pytest.raises(Exception, match=r"UnknownIssuer|certificate"):
        obstore.get_range(_no_retry_store(https.url), PATH, start=0, end=10)


# -- icechunk ----------------------------------------------------------------


def _tiny_repo(
    path: Path,
    url: str,
    store_opts: dict[str, str] | None,
    checksum: dt.datetime | None = None,
) -> ic.Repository:
    """A repo with one uint8 array whose only chunk is bytes OFFSET.. of ``url + PATH``.

    The container's store options are what the test wants to try; retries
    are off so that a refused certificate fails at once.
    """
    cfg = ic.RepositoryConfig.default()
    cfg.set_virtual_chunk_container(ic.VirtualChunkContainer(url, ic.http_store(opts=store_opts)))
    cfg.storage = ic.StorageSettings(retries=ic.StorageRetriesSettings(max_tries=1))
    repo = ic.Repository.create(
        ic.local_filesystem_storage(str(path)),
        config=cfg,
        authorize_virtual_chunk_access=ic.containers_credentials({url: ic.credentials.HttpAccess}),
    )
    session = repo.writable_session("main")
    root = zarr.group(store=session.store)
    root.create_array(
        "v", shape=(LENGTH,), chunks=(LENGTH,), dtype="uint8", compressors=None, fill_value=0
    )
    session.store.set_virtual_ref(
        "v/c/0", url + PATH, offset=OFFSET, length=LENGTH, checksum=checksum
    )
    session.commit("one virtual chunk")
    return repo


def _read_tiny(repo: ic.Repository) -> bytes:
    session = repo.readonly_session("main")
    return np.asarray(zarr.open_array(session.store, path="v", mode="r")[:]).tobytes()


def test_icechunk_http_store_ignores_root_certificate(
    tmp_path: Path, https: NginxServer, test_ca: TestCA
) -> None:
    """Icechunk 2.3 accepts ``root_certificate`` in ``http_store`` opts and ignores it.

    The key is not one of object_store's client config keys, and unknown
    keys are dropped without a word, so the fetch meets the certificate
    unverified. If this test fails, Icechunk learnt the option: use it.
    """
    ic.set_logs_filter("off")
    repo = _tiny_repo(tmp_path / "r", https.url, {"root_certificate": test_ca.ca_pem()})
    with pytest.raises(ic.IcechunkError, match="UnknownIssuer"):
        _read_tiny(repo)


def test_icechunk_reads_virtual_chunks_over_tls_with_proxy_ca_certificate(
    tmp_path: Path, tree: Path, https: NginxServer, test_ca: TestCA
) -> None:
    """What does work in-process: object_store's proxy CA option.

    ``proxy_ca_certificate`` is added to the client's roots, but only when
    ``proxy_url`` is set; ``proxy_excludes`` naming the mirror's host makes
    the requests bypass that (unreachable) proxy. Icechunk saves container
    options in the repository config, so a reader sets this in memory only
    (as ``with_read_policy`` does for timeouts).
    """
    ic.set_logs_filter("off")
    opts = {
        "proxy_url": "http://127.0.0.1:9",
        "proxy_ca_certificate": test_ca.ca_pem(),
        "proxy_excludes": "127.0.0.1,localhost",
    }
    repo = _tiny_repo(tmp_path / "r", https.url, opts)
    assert _read_tiny(repo) == _expected(tree)[OFFSET : OFFSET + LENGTH]
    # And the same repository without the option is refused.
    bare = _tiny_repo(tmp_path / "bare", https.url, None)
    with pytest.raises(ic.IcechunkError, match="UnknownIssuer"):
        _read_tiny(bare)


_SSL_CERT_FILE_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import obstore
    from obstore.store import HTTPStore
    import icechunk as ic
    from tests.test_tls_servers import _tiny_repo, _read_tiny, PATH
    ic.set_logs_filter("off")
    url, tmp = sys.argv[1], Path(sys.argv[2])
    ice = _read_tiny(_tiny_repo(tmp, url, None))
    obs = bytes(obstore.get_range(HTTPStore.from_url(url), PATH, start=1000, end=1100))
    sys.stdout.buffer.write(ice + obs)
    """
)


def test_icechunk_and_obstore_trust_ssl_cert_file(
    tmp_path: Path, tree: Path, https: NginxServer, test_ca: TestCA
) -> None:
    """``SSL_CERT_FILE`` is honoured by both (rustls-platform-verifier reads it on Linux).

    It replaces the system bundle for the whole process, which suits a test
    or benchmark process but not a library; run in a child so this process
    keeps its roots. (In one process, obstore reads it when a store is
    built, Icechunk when a Repository instance first fetches from a
    container: setting it later does not help an open repository.)
    """
    env = dict(os.environ, SSL_CERT_FILE=str(test_ca.ca_cert))
    out = subprocess.run(
        [sys.executable, "-c", _SSL_CERT_FILE_CHILD, https.url, str(tmp_path / "r")],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-2000:]
    want = _expected(tree)[OFFSET : OFFSET + LENGTH]
    assert out.stdout == want + want


# -- redirects ---------------------------------------------------------------


@pytest.fixture(scope="module")
def other_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    """nginx serving OTHER bytes at the same path: where a hostile redirect points."""
    root = tmp_path_factory.mktemp("other-origin")
    (root / PATH).parent.mkdir(parents=True)
    (root / PATH).write_bytes(b"Z" * 20_000)
    with NginxServer(root) as server:
        yield server


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_clients_follow_redirects_to_another_origin(
    tmp_path: Path, tree: Path, other_origin: NginxServer, status: int
) -> None:
    """Icechunk's virtual chunk fetch and obstore follow a redirect anywhere.

    Both return the other origin's bytes as the chunk, with no error, even
    with a last-modified checksum on the reference: Icechunk sends
    ``If-Unmodified-Since`` to the other origin, which judges it against its
    own file. Neither has an option to refuse redirects, so the reader's
    HTTP boundary cannot delegate "no redirect to an origin the caller has
    not authorised" to them. If this test fails, one of them changed: good
    news, check which.
    """
    ic.set_logs_filter("off")
    # Any modification time of the source before this passes the checksum.
    checksum = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    other_origin.clear_log()
    with LiarServer(
        tree, "redirect_other_origin", redirect_to=other_origin.url, redirect_status=status
    ) as liar:
        repo = _tiny_repo(tmp_path / "r", liar.url, None, checksum)
        assert _read_tiny(repo) == b"Z" * LENGTH
        store = HTTPStore.from_url(liar.url, client_options={"allow_http": True})
        got = obstore.get_range(store, PATH, start=OFFSET, end=OFFSET + LENGTH)
        assert bytes(got) == b"Z" * LENGTH
        assert [r.status for r in liar.requests()] == [status, status]
    icechunk_req, obstore_req = other_origin.requests(min_count=2)
    assert icechunk_req["user_agent"].startswith("icechunk/")
    assert icechunk_req["if_unmodified_since"] is not None
    assert obstore_req["user_agent"].startswith("object_store/")
