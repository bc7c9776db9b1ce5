"""Test certificates made at run time: a CA, a server certificate for 127.0.0.1/localhost, a client one.

Nothing is checked in: :func:`make_pki` writes fresh PEM files into a directory, so no key outlives
the test session and no certificate expires in the repository.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mreg.client.channels import Credentials


@dataclass(frozen=True)
class Pki:
    """PEM files: ``ca`` signed ``server``, ``expired_server`` (valid until yesterday), ``misnamed_server``
    (naming only elsewhere.example) and ``client``; ``other_ca`` signed nothing of ours."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path
    expired_server_cert: Path
    expired_server_key: Path
    misnamed_server_cert: Path
    misnamed_server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    usages: list[x509.ObjectIdentifier],
    names: list[x509.GeneralName],
    expired: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2 if expired else 0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    """Writes a CA, a server and a client certificate (and a second, unrelated CA) into ``directory``.

    The server certificate names 127.0.0.1, ::1 and localhost, and also allows client authentication,
    so a service can present it to another (as ``mreg serve`` does under mutual TLS).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("mreg test CA")
    server_names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    server_usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    server = _leaf("mreg test server", ca, server_usages, server_names)
    expired_server = _leaf("mreg test server", ca, server_usages, server_names, expired=True)
    misnamed_server = _leaf("mreg test server", ca, server_usages, [x509.DNSName("elsewhere.example")])
    client = _leaf("mreg test client", ca, [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    other_ca, _ = _ca("some other CA")
    pki = Pki(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
        other_ca_cert=directory / "other-ca.pem",
        expired_server_cert=directory / "expired-server.pem",
        expired_server_key=directory / "expired-server-key.pem",
        misnamed_server_cert=directory / "misnamed-server.pem",
        misnamed_server_key=directory / "misnamed-server-key.pem",
    )
    _write_cert(ca[0], pki.ca_cert)
    _write_cert(server[0], pki.server_cert)
    _write_key(server[1], pki.server_key)
    _write_cert(client[0], pki.client_cert)
    _write_key(client[1], pki.client_key)
    _write_cert(other_ca, pki.other_ca_cert)
    _write_cert(expired_server[0], pki.expired_server_cert)
    _write_key(expired_server[1], pki.expired_server_key)
    _write_cert(misnamed_server[0], pki.misnamed_server_cert)
    _write_key(misnamed_server[1], pki.misnamed_server_key)
    return pki


def credentials_of(
    ca_cert: Path | None = None, client_cert: Path | None = None, client_key: Path | None = None
) -> Credentials:
    """Client credentials from PEM files, as MREG_CA_CERT, MREG_CLIENT_CERT and MREG_CLIENT_KEY give them."""
    return Credentials(
        ca_cert=ca_cert.read_bytes() if ca_cert else None,
        client_cert=client_cert.read_bytes() if client_cert else None,
        client_key=client_key.read_bytes() if client_key else None,
    )
