"""A throwaway certificate authority, so test servers speak HTTPS like real mirrors.

The TESSERA mirrors are HTTPS, and every client we use has its own idea of
where trusted roots come from: aiohttp takes an :class:`ssl.SSLContext`,
obstore and icechunk (Rust, rustls) ignore ``SSL_CERT_FILE`` and take a PEM
in their ``root_certificate`` client option. Testing the read path over TLS
therefore needs a CA whose certificate a test can hand to each of them, and a
server certificate it signed for the loopback names the test servers listen
on. Nothing here is fit for anything but tests: the keys are written
unencrypted and live for a day.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Names the server certificate is valid for: what loopback test servers answer on.
SERVER_DNS_NAMES = ("localhost",)
SERVER_IP_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class TestCA:
    """Paths of a generated CA and of the server certificate it signed (all PEM).

    Attributes
    ----------
    ca_cert
        The CA's self-signed certificate: what a client must trust.
    server_cert
        The server's certificate (leaf only; clients verify it against ``ca_cert``).
    server_key
        The server's private key, unencrypted.
    """

    # pytest would try to collect a class named Test* from a test module's namespace.
    __test__ = False

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def ca_pem(self) -> str:
        """The CA certificate as PEM text, as obstore/icechunk's ``root_certificate`` takes it."""
        return self.ca_cert.read_text()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tessera-vz tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # A private key readable only by its owner, although it guards nothing.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def make_test_ca(directory: str | Path, *, days: float = 2.0) -> TestCA:
    """Generate a CA and a loopback server certificate into ``directory``.

    EC P-256 keys make this take a few milliseconds, so a session fixture
    costs nothing. The server certificate carries DNS ``localhost`` and IP
    ``127.0.0.1`` and ``::1`` as subject alternative names (what hostname
    verification checks; the common name is ignored by modern clients), and
    the server-auth extended key usage rustls insists on.

    Parameters
    ----------
    directory
        Where to write ``ca.pem``, ``server.pem`` and ``server.key``; created if missing.
    days
        Validity; both certificates start an hour in the past to tolerate clock skew.

    Returns
    -------
    TestCA
        The paths of the three files.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(hours=1)
    not_after = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("tessera-vz test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVER_DNS_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_IP_ADDRESSES]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    paths = TestCA(out / "ca.pem", out / "server.pem", out / "server.key")
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.server_key, key)
    # The CA key is not needed after signing: it is never written.
    return paths


def server_context(ca: TestCA) -> ssl.SSLContext:
    """A server-side :class:`ssl.SSLContext` presenting the test server certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(ca.server_cert, ca.server_key)
    return ctx


def client_context(ca: TestCA) -> ssl.SSLContext:
    """A client-side :class:`ssl.SSLContext` that trusts the test CA (and only it)."""
    return ssl.create_default_context(cafile=str(ca.ca_cert))
