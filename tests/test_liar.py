"""The misbehaving server really emits each lie on the wire, and tells the truth otherwise.

The reader's HTTP boundary will be tested against :class:`LiarServer`; those
tests only mean something if the server does what its scenario table says.
So every scenario is read here with the standard library's ``http.client``
or a raw socket, never with our reader: what arrives is what was sent.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import email.parser
import email.utils
import gzip
import http.client
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tessera_vz.testing.liar import (
    BOUNDARY,
    HUGE_LENGTH,
    LiarServer,
    Options,
    Scenario,
)
from tessera_vz.testing.tls import TestCA, client_context

PATH = "2024/grid_0.85_49.95/grid_0.85_49.95.npy"
SIZE = 10_000


@pytest.fixture(autouse=True)
def _only_explicit_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests say exactly which CA each client trusts; the session's
    ``SSL_CERT_FILE`` (set by the ``https`` fixture of other modules) must
    not trust it for them."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("liar-tree")
    (root / PATH).parent.mkdir(parents=True)
    (root / PATH).write_bytes(os.urandom(SIZE))
    (root / "other.bin").write_bytes(os.urandom(64))
    return root


@pytest.fixture(scope="module")
def data(tree: Path) -> bytes:
    return (tree / PATH).read_bytes()


@pytest.fixture(scope="module")
def server(tree: Path) -> Iterator[LiarServer]:
    with LiarServer(tree) as s:
        yield s


@pytest.fixture
def liar(server: LiarServer) -> LiarServer:
    """The module's server, honest and with an empty log."""
    server.set_scenario("honest")
    server.clear_log()
    return server


def get(
    server: LiarServer, target: str = "/" + PATH, method: str = "GET", **headers: str
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request on a fresh connection with http.client; the whole (framed) body."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, target, headers={k.replace("_", "-"): v for k, v in headers.items()})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


@dataclass
class Wire:
    """What a raw socket received, and how the server ended it."""

    data: bytes
    ended: str  # "close", "reset" or "timeout"

    @property
    def head(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[0]

    @property
    def body(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[2]

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            if k.strip().lower() == name.lower():
                return v.strip()
        return None


def raw(
    server: LiarServer,
    target: str = "/" + PATH,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 3.0,
    limit: int | None = None,
    method: str = "GET",
) -> Wire:
    """Send one request on a raw socket; read until close, reset, ``timeout`` or ``limit`` bytes."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    out = bytearray()
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (limit is not None and len(out) >= limit):
                return Wire(bytes(out), "timeout")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return Wire(bytes(out), "timeout")
            except ConnectionResetError:
                return Wire(bytes(out), "reset")
            if not chunk:
                return Wire(bytes(out), "close")
            out += chunk


def multipart(resp: http.client.HTTPResponse, body: bytes) -> list[tuple[str, bytes]]:
    """(Content-Range, data) of each part, parsed by the stdlib's MIME parser."""
    ctype = resp.getheader("Content-Type") or ""
    assert ctype == f"multipart/byteranges; boundary={BOUNDARY}", ctype
    msg = email.parser.BytesParser().parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
    out = []
    for part in msg.get_payload():
        assert not isinstance(part, str)
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out.append((str(part["Content-Range"]), payload))
    return out


# -- honest ------------------------------------------------------------------


def test_honest_whole_file_ranges_404_416_head(liar: LiarServer, data: bytes) -> None:
    resp, body = get(liar)
    assert (resp.status, body) == (200, data)
    assert resp.getheader("Content-Length") == str(SIZE)
    etag = resp.getheader("ETag")
    assert etag is not None and etag.startswith('"') and etag.endswith('"')
    assert email.utils.parsedate_to_datetime(resp.getheader("Last-Modified") or "") is not None

    resp, body = get(liar, Range="bytes=100-227")
    assert (resp.status, body) == (206, data[100:228])
    assert resp.getheader("Content-Range") == f"bytes 100-227/{SIZE}"
    resp, body = get(liar, Range="bytes=-10")
    assert (resp.status, body, resp.getheader("Content-Range")) == (
        206,
        data[-10:],
        f"bytes {SIZE - 10}-{SIZE - 1}/{SIZE}",
    )
    resp, body = get(liar, Range=f"bytes={SIZE - 5}-")
    assert (resp.status, body) == (206, data[-5:])
    resp, body = get(liar, Range=f"bytes={SIZE - 5}-{SIZE + 100}")  # clipped
    assert (resp.status, body) == (206, data[-5:])

    resp, body = get(liar, Range="bytes=0-9, 500-599,9000-9127")
    assert resp.status == 206
    assert multipart(resp, body) == [
        (f"bytes 0-9/{SIZE}", data[0:10]),
        (f"bytes 500-599/{SIZE}", data[500:600]),
        (f"bytes 9000-9127/{SIZE}", data[9000:9128]),
    ]

    resp, body = get(liar, Range=f"bytes={SIZE}-{SIZE + 10}")
    assert resp.status == 416
    assert resp.getheader("Content-Range") == f"bytes */{SIZE}"
    resp, body = get(liar, Range="bytes=9-1")  # invalid: ignored, whole file
    assert (resp.status, body) == (200, data)
    resp, body = get(liar, Range="lines=1-2")
    assert (resp.status, body) == (200, data)

    assert get(liar, "/missing.npy")[0].status == 404
    assert get(liar, "/../../etc/passwd")[0].status == 404
    assert get(liar, "/2024")[0].status == 404  # a directory
    # Percent-encoded paths are decoded.
    resp, body = get(liar, "/" + PATH.replace("grid_", "grid%5F"))
    assert (resp.status, body) == (200, data)

    resp, body = get(liar, method="HEAD", Range="bytes=0-9")
    assert (resp.status, body) == (206, b"")
    assert resp.getheader("Content-Length") == "10"
    assert resp.getheader("Content-Range") == f"bytes 0-9/{SIZE}"


def test_honest_keep_alive(liar: LiarServer, data: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", liar.port, timeout=10)
    for start in (0, 100, 200):
        conn.request("GET", "/" + PATH, headers={"Range": f"bytes={start}-{start + 9}"})
        resp = conn.getresponse()
        assert resp.read() == data[start : start + 10]
        assert not resp.will_close
    conn.close()
    assert len({r.connection for r in liar.requests(3)}) == 1


def test_honest_preconditions(liar: LiarServer, tree: Path) -> None:
    etag = get(liar, method="HEAD")[0].getheader("ETag") or ""
    mtime = (tree / PATH).stat().st_mtime
    past = email.utils.formatdate(mtime - 3600, usegmt=True)
    future = email.utils.formatdate(mtime + 3600, usegmt=True)
    rng = {"Range": "bytes=0-9"}
    assert get(liar, If_Match=etag, **rng)[0].status == 206
    assert get(liar, If_Match=f'"nope", {etag}', **rng)[0].status == 206
    assert get(liar, If_Match="*", **rng)[0].status == 206
    resp, _ = get(liar, If_Match='"nope"', **rng)
    assert resp.status == 412
    assert resp.getheader("ETag") == etag
    assert get(liar, If_Match=etag.strip('"'), **rng)[0].status == 412  # unquoted
    assert get(liar, If_Match="W/" + etag, **rng)[0].status == 412  # weak never matches
    assert get(liar, If_Unmodified_Since=past, **rng)[0].status == 412
    assert get(liar, If_Unmodified_Since=future, **rng)[0].status == 206
    assert get(liar, If_Unmodified_Since="garbage", **rng)[0].status == 206
    # If-Match decides alone when both are sent.
    assert get(liar, If_Match=etag, If_Unmodified_Since=past, **rng)[0].status == 206


def test_log_records_request_line_and_headers(liar: LiarServer) -> None:
    target = "/2024//grid_0.85_49.95/..%2Fx.npy?q=1"
    raw(
        liar,
        target,
        headers={
            "Range": "bytes=0-1",
            "Accept-Encoding": "gzip, br",
            "If-Match": '"abc"',
            "X-Case": "Kept",
            "Connection": "close",
        },
    )
    (rec,) = liar.requests(1)
    assert (rec.method, rec.target, rec.version) == ("GET", target, "HTTP/1.1")
    assert rec.header("host") == f"127.0.0.1:{liar.port}"
    assert rec.header("ACCEPT-ENCODING") == "gzip, br"
    assert rec.header("Range") == "bytes=0-1"
    assert rec.header("If-Match") == '"abc"'
    assert ("X-Case", "Kept") in rec.headers
    assert rec.header("Authorization") is None
    assert (rec.status, rec.scenario, rec.done) == (404, Scenario.HONEST, True)
    assert rec.bytes_sent > 0


def test_tls_with_the_test_ca(tree: Path, test_ca: TestCA, data: bytes) -> None:
    with LiarServer(tree, tls=test_ca) as s:
        assert s.url.startswith("https://127.0.0.1:")
        conn = http.client.HTTPSConnection(
            "127.0.0.1", s.port, timeout=10, context=client_context(test_ca)
        )
        conn.request("GET", "/" + PATH, headers={"Range": "bytes=5-14"})
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (206, data[5:15])
        conn.close()
        # A client that does not trust the CA is refused, and the server lives on.
        untrusting = http.client.HTTPSConnection(
            "127.0.0.1", s.port, timeout=10, context=ssl.create_default_context()
        )
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusting.request("GET", "/" + PATH)
        s.set_scenario("short_body")
        conn = http.client.HTTPSConnection(
            "127.0.0.1", s.port, timeout=10, context=client_context(test_ca)
        )
        conn.request("GET", "/" + PATH)
        with pytest.raises(http.client.IncompleteRead):
            conn.getresponse().read()
        assert [r.status for r in s.requests(2)] == [206, 200]


# -- multipart lies ------------------------------------------------------------

ASKED = "bytes=0-99,1000-1099,5000-5099"


def test_duplicate_part(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("duplicate_part")
    resp, body = get(liar, Range=ASKED)
    parts = multipart(resp, body)
    assert [cr for cr, _ in parts] == [
        f"bytes {r}/{SIZE}" for r in ("0-99", "0-99", "1000-1099", "5000-5099")
    ]
    assert parts[0][1] == data[0:100]
    assert parts[1][1] != data[0:100] and len(parts[1][1]) == 100
    assert parts[2][1] == data[1000:1100]


def test_overlapping_parts(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("overlapping_parts")
    resp, body = get(liar, Range=ASKED)
    parts = multipart(resp, body)
    assert parts[0] == (f"bytes 0-99/{SIZE}", data[0:100])
    cr, second = parts[1]
    assert cr == f"bytes 96-1099/{SIZE}"  # starts inside the first part
    assert second[:4] != data[96:100]  # and disagrees on the shared bytes
    assert second[4:] == data[100:1100]
    assert parts[2] == (f"bytes 5000-5099/{SIZE}", data[5000:5100])


def test_extra_part(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("extra_part")
    resp, body = get(liar, Range=ASKED)
    parts = multipart(resp, body)
    assert [cr for cr, _ in parts] == [
        f"bytes 0-99/{SIZE}",
        f"bytes 5100-5115/{SIZE}",
        f"bytes 1000-1099/{SIZE}",
        f"bytes 5000-5099/{SIZE}",
    ]
    assert parts[1][1] == data[5100:5116]


def test_missing_part(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("missing_part")
    resp, body = get(liar, Range=ASKED)
    assert multipart(resp, body) == [
        (f"bytes 0-99/{SIZE}", data[0:100]),
        (f"bytes 1000-1099/{SIZE}", data[1000:1100]),
    ]
    # Two asked ranges: still a multipart answer, with one part.
    resp, body = get(liar, Range="bytes=0-9,20-29")
    assert multipart(resp, body) == [(f"bytes 0-9/{SIZE}", data[0:10])]


def test_merged_parts(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("merged_parts")
    resp, body = get(liar, Range=ASKED)
    assert multipart(resp, body) == [
        (f"bytes 0-1099/{SIZE}", data[0:1100]),
        (f"bytes 5000-5099/{SIZE}", data[5000:5100]),
    ]
    # Two ranges merge into one: a plain single-part 206.
    resp, body = get(liar, Range="bytes=0-9,20-29")
    assert resp.status == 206
    assert resp.getheader("Content-Range") == f"bytes 0-29/{SIZE}"
    assert body == data[0:30]


def test_reordered_parts(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("reordered_parts")
    resp, body = get(liar, Range=ASKED)
    assert multipart(resp, body) == [
        (f"bytes 5000-5099/{SIZE}", data[5000:5100]),
        (f"bytes 1000-1099/{SIZE}", data[1000:1100]),
        (f"bytes 0-99/{SIZE}", data[0:100]),
    ]


@pytest.mark.parametrize("scenario", ["duplicate_part", "extra_part", "reordered_parts"])
def test_multipart_lies_leave_single_ranges_alone(
    liar: LiarServer, data: bytes, scenario: str
) -> None:
    liar.set_scenario(scenario)
    resp, body = get(liar, Range="bytes=10-19")
    assert (resp.status, resp.getheader("Content-Range"), body) == (
        206,
        f"bytes 10-19/{SIZE}",
        data[10:20],
    )


# -- single-answer lies (well framed) ------------------------------------------


def test_wrong_content_range(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("wrong_content_range")
    resp, body = get(liar, Range="bytes=100-199")
    assert resp.getheader("Content-Range") == f"bytes 200-299/{SIZE}"
    assert body == data[200:300]
    resp, body = get(liar, Range=f"bytes={SIZE - 100}-")  # at the end: the range before
    assert resp.getheader("Content-Range") == f"bytes {SIZE - 200}-{SIZE - 101}/{SIZE}"
    assert body == data[-200:-100]


def test_long_body(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("long_body")
    resp, body = get(liar, Range="bytes=100-199")
    assert resp.getheader("Content-Range") == f"bytes 100-199/{SIZE}"
    assert resp.getheader("Content-Length") == "116"
    assert body == data[100:216]


def test_wrong_total(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("wrong_total")
    resp, body = get(liar, Range="bytes=100-199")
    assert resp.getheader("Content-Range") == f"bytes 100-199/{SIZE + 1000}"
    assert body == data[100:200]


def test_full_200(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("full_200")
    resp, body = get(liar, Range="bytes=100-199")
    assert (resp.status, body, resp.getheader("Content-Range")) == (200, data, None)


def test_gzip_and_gzip_lying(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("gzip")
    resp, body = get(liar, Range="bytes=100-199", Accept_Encoding="identity")
    assert resp.getheader("Content-Encoding") == "gzip"
    assert resp.getheader("Content-Range") == f"bytes 100-199/{SIZE}"
    assert gzip.decompress(body) == data[100:200]
    liar.set_scenario("gzip_lying")
    resp, body = get(liar, Range="bytes=100-199")
    assert resp.getheader("Content-Encoding") == "gzip"
    assert body == data[100:200]
    with pytest.raises(gzip.BadGzipFile):
        gzip.decompress(body)


def test_chunked(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("chunked")
    wire = raw(liar, headers={"Range": "bytes=0-4999", "Connection": "close"})
    assert wire.header("Transfer-Encoding") == "chunked"
    assert wire.header("Content-Length") is None
    # Several chunks of different sizes, then the last-chunk.
    assert wire.body.startswith(b"1\r\n" + data[0:1] + b"\r\n7\r\n" + data[1:8] + b"\r\n")
    assert wire.body.endswith(b"\r\n0\r\n\r\n")
    resp, body = get(liar, Range="bytes=0-4999")
    assert (resp.status, body) == (206, data[:5000])


@pytest.mark.parametrize(
    ("status", "extra"), [(500, None), (503, ("Retry-After", "0")), (416, None)]
)
def test_status(liar: LiarServer, status: int, extra: tuple[str, str] | None) -> None:
    liar.set_scenario(f"status_{status}")
    resp, _ = get(liar, Range="bytes=0-9")
    assert resp.status == status
    if extra is not None:
        assert resp.getheader(extra[0]) == extra[1]
    if status == 416:
        assert resp.getheader("Content-Range") == f"bytes */{SIZE}"
    assert liar.requests(1)[-1].status == status


def test_ignore_preconditions(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("ignore_preconditions")
    resp, body = get(
        liar,
        Range="bytes=0-9",
        If_Match='"changed"',
        If_Unmodified_Since="Thu, 01 Jan 1970 00:00:00 GMT",
    )
    assert (resp.status, body) == (206, data[:10])


@pytest.mark.parametrize("variant", ["control", "long", "unquoted", "weak", "bad_date"])
def test_bad_validators(liar: LiarServer, data: bytes, variant: str) -> None:
    liar.set_scenario("bad_validators", validators=variant)
    wire = raw(liar, headers={"Range": "bytes=0-9", "Connection": "close"})
    etag, lm = wire.header("ETag"), wire.header("Last-Modified")
    assert etag is not None and lm is not None
    if variant == "control":
        assert "\x01" in etag and "\x7f" in etag and "\x01" in lm
    elif variant == "long":
        assert len(etag) == 8194
    elif variant == "unquoted":
        assert not etag.startswith('"')
    elif variant == "weak":
        assert etag.startswith('W/"')
    else:
        with pytest.raises((TypeError, ValueError)):
            email.utils.parsedate_to_datetime(lm)
    assert wire.body == data[:10]
    # The hostile ETag sent back verbatim is what If-Match compares with.
    if variant != "weak":
        hit = raw(liar, headers={"Range": "bytes=0-9", "If-Match": etag, "Connection": "close"})
        assert hit.data.startswith(b"HTTP/1.1 206 ")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_other_origin(liar: LiarServer, status: int) -> None:
    liar.set_scenario(
        "redirect_other_origin", redirect_to="https://mirror.example:8443/", redirect_status=status
    )
    resp, _ = get(liar, "/" + PATH + "?x=1")
    assert resp.status == status
    assert resp.getheader("Location") == f"https://mirror.example:8443/{PATH}?x=1"


def test_redirect_same_origin_and_loop(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("redirect_same_origin")
    resp, _ = get(liar, Range="bytes=0-9")
    location = resp.getheader("Location") or ""
    assert resp.status == 302
    assert location == f"{liar.url}_moved/{PATH}"
    resp, body = get(liar, location.removeprefix(liar.url.rstrip("/")), Range="bytes=0-9")
    assert (resp.status, body) == (206, data[:10])
    liar.set_scenario("redirect_loop")
    resp, _ = get(liar)
    assert (resp.status, resp.getheader("Location")) == (302, liar.url + PATH)


def test_redirect_other_origin_needs_a_target(liar: LiarServer) -> None:
    with pytest.raises(ValueError, match="redirect_to"):
        liar.set_scenario("redirect_other_origin")
    with pytest.raises(ValueError, match="redirect_status"):
        liar.set_scenario("redirect_same_origin", redirect_status=303)
    with pytest.raises(ValueError):
        liar.set_scenario("no_such_lie")


# -- lies about framing (raw socket) -------------------------------------------


@pytest.mark.parametrize("keep_open", [False, True])
def test_huge_content_length(liar: LiarServer, data: bytes, keep_open: bool) -> None:
    liar.set_scenario("huge_content_length", keep_open=keep_open)
    wire = raw(liar, headers={"Range": "bytes=0-99"}, timeout=1.5)
    assert wire.data.startswith(b"HTTP/1.1 206 ")
    assert wire.header("Content-Length") == str(HUGE_LENGTH)
    assert wire.header("Content-Range") == f"bytes 0-99/{SIZE}"
    assert wire.body == data[:100]
    assert wire.ended == ("timeout" if keep_open else "close")


def test_full_200_huge(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("full_200_huge")
    wire = raw(liar, headers={"Range": "bytes=0-99"})
    assert wire.data.startswith(b"HTTP/1.1 200 ")
    assert wire.header("Content-Length") == str(HUGE_LENGTH)
    assert (wire.body, wire.ended) == (data, "close")


def test_short_body(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("short_body")
    wire = raw(liar, headers={"Range": "bytes=0-99"})
    assert wire.header("Content-Length") == "100"
    assert (wire.body, wire.ended) == (data[:50], "close")


def test_reset_mid_body(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("reset_mid_body")
    wire = raw(liar, headers={"Range": "bytes=0-99"})
    assert wire.ended == "reset"
    # The kernel may drop bytes still unread when the RST lands; what did
    # arrive is the start of the answer, and the server sent half the body.
    assert data[:50].startswith(wire.body)
    (rec,) = liar.requests(1)
    assert rec.status == 206 and rec.bytes_sent > 50
    if wire.head:
        assert wire.header("Content-Length") == "100"


def test_no_content_length_close(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("no_content_length_close")
    wire = raw(liar, headers={"Range": "bytes=0-99"})
    assert wire.header("Content-Length") is None and wire.header("Transfer-Encoding") is None
    assert wire.header("Connection") == "close"
    assert (wire.body, wire.ended) == (data[:100], "close")


def test_chunked_endless(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("chunked_endless", piece=4096, interval=0.0)
    wire = raw(liar, headers={"Range": "bytes=0-99"}, timeout=5, limit=1 << 20)
    assert wire.header("Transfer-Encoding") == "chunked"
    assert wire.ended == "timeout" and len(wire.data) >= 1 << 20  # still going
    assert wire.body.startswith(b"1\r\n" + data[:1] + b"\r\n")
    assert b"\r\n0\r\n\r\n" not in wire.body


def test_trickle(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("trickle", piece=10, interval=0.2)
    wire = raw(liar, headers={"Range": "bytes=0-99"}, timeout=0.5)
    assert wire.header("Content-Length") == "100"
    assert wire.ended == "timeout"
    assert 10 <= len(wire.body) <= 40 and data.startswith(wire.body)


def test_trickle_default_outlasts_timeouts(liar: LiarServer) -> None:
    """The defaults stretch a 128-byte point read over half a minute."""
    opts = Options()
    assert 128 / opts.piece * opts.interval >= 30


def test_stall_headers(liar: LiarServer) -> None:
    liar.set_scenario("stall_headers")
    wire = raw(liar, headers={"Range": "bytes=0-99"}, timeout=0.5)
    assert (wire.data, wire.ended) == (b"", "timeout")
    (rec,) = liar.requests(1)
    assert rec.header("Range") == "bytes=0-99" and rec.status == 0


def test_header_flood(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("header_flood")
    wire = raw(liar, headers={"Range": "bytes=0-99", "Connection": "close"})
    assert len(wire.head) >= 1 << 20
    assert wire.head.count(b"\r\nX-Flood-") >= 1000
    assert wire.body == data[:100]


def test_bad_status_line(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("bad_status_line")
    wire = raw(liar, headers={"Range": "bytes=0-99", "Connection": "close"})
    assert wire.data.startswith(b"HTTP/1.1 OK 206\r\n")
    assert wire.body == data[:100]
    with pytest.raises(http.client.BadStatusLine):
        get(liar)


def test_http09(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("http09")
    wire = raw(liar, headers={"Range": "bytes=0-99"})
    assert (wire.data, wire.ended) == (data[:100], "close")


# -- control -------------------------------------------------------------------


def test_path_and_first_select_the_requests_to_lie_to(liar: LiarServer, data: bytes) -> None:
    liar.set_scenario("status_503", path="grid_", first=2)
    assert get(liar, "/other.bin")[0].status == 200  # path does not match
    statuses = [get(liar, Range="bytes=0-9")[0].status for _ in range(3)]
    assert statuses == [503, 503, 206]
    assert [r.scenario for r in liar.requests(4)] == [
        Scenario.HONEST,
        Scenario.STATUS_503,
        Scenario.STATUS_503,
        Scenario.HONEST,
    ]


def test_64_concurrent_connections(liar: LiarServer, data: bytes) -> None:
    """64 slow answers at once finish together: one thread per connection, no queueing."""
    liar.set_scenario("trickle", piece=50, interval=0.3)
    barrier = threading.Barrier(64)

    def one(i: int) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", liar.port, timeout=30)
        conn.connect()
        barrier.wait()
        conn.request("GET", "/" + PATH, headers={"Range": f"bytes={i}-{i + 99}"})
        body = conn.getresponse().read()
        conn.close()
        return body

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        bodies = list(pool.map(one, range(64)))
    elapsed = time.monotonic() - t0
    assert bodies == [data[i : i + 100] for i in range(64)]
    # Serially this would take 64 x 0.3 s = 19 s.
    assert elapsed < 10, elapsed
    assert len({r.connection for r in liar.requests(64)}) == 64


def test_stop_releases_stalled_connections(tree: Path) -> None:
    s = LiarServer(tree, "stall_headers").start()
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    with contextlib.closing(sock):
        sock.sendall(b"GET /" + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        s.requests(1)
        t0 = time.monotonic()
        s.stop()
        assert sock.recv(10) == b""
        assert time.monotonic() - t0 < 3
