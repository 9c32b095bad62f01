"""Throwaway certificates for a local or test cluster: a CA and certificates it signs.

`shareddb cluster up --tls` and the tests make them here, with the `cryptography` library (no
openssl processes). They are for a cluster on one machine or a lab network, not for production:
the CA's private key is not kept, so the CA cannot sign anything after the set is made.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_FOR = datetime.timedelta(days=365)
CLOCK_SLACK = datetime.timedelta(minutes=5)  # valid a little before now: clocks differ


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA in memory: its certificate and the key that signs with it."""

    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, name: str = "shareddb throwaway CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = _builder(subject, subject, key, now, ca=True).sign(key, hashes.SHA256())
        return cls(name, cert, key)

    def write(self, path: Path) -> Path:
        """The CA certificate as PEM at `path` (what clients and nodes are given as --ca)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, name: str, hosts: Iterable[str], cert_path: Path, key_path: Path) -> None:
        """A certificate for `name`, good for both ends of a connection (server and client auth)
        and for every host name or IP address in `hosts`; written as PEM, the key readable by its
        owner only."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            _builder(subject, self.cert.subject, key, now, ca=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(_alt_names(hosts)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Created readable by its owner only, never world-readable for a moment.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        os.chmod(key_path, 0o600)  # also when the file was there before


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """The files one node is started with: --tls-cert, --tls-key, --tls-ca."""

    cert: Path
    key: Path
    ca: Path

    def flags(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key), "--tls-ca", str(self.ca)]


def make_cluster(directory: Path, names: Iterable[str], hosts: Iterable[str]) -> list[NodeFiles]:
    """A new CA in `directory` (ca.pem) and a certificate per name (NAME.pem, NAME-key.pem) for
    `hosts`; the CA's key is not kept."""
    authority = Authority.create()
    ca = authority.write(directory / "ca.pem")
    hosts = list(hosts)
    files = []
    for name in names:
        node = NodeFiles(directory / f"{name}.pem", directory / f"{name}-key.pem", ca)
        authority.issue(name, hosts, node.cert, node.key)
        files.append(node)
    return files


def _alt_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # in order, each once
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """What a CA's certificate and a node's have in common: names, key, serial, validity, whether
    it is a CA, what its key may do (a CA's signs certificates; a node's signs and agrees keys for
    TLS) and its key identifier."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SLACK)
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=not ca,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
