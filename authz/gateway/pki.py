"""A throwaway certificate authority for the demo and the tests: a zone CA
that issues X.509 SVIDs (one SPIFFE URI SAN) to workloads and a server
certificate to the gateway. Short-lived, written to a directory at run
time, never committed."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "IssuedCertificate", "issued_in"]

_LIFETIME = datetime.timedelta(hours=2)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    certificate: Path
    key: Path


def _stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)


def issued_in(directory: Path, name: str) -> IssuedCertificate:
    """Where a CA issuing into ``directory`` put the certificate of ``name``
    (a server name, or a SPIFFE ID for an SVID)."""
    stem = _stem(name.removeprefix("spiffe://"))
    return IssuedCertificate(directory / f"{stem}.pem", directory / f"{stem}.key")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


class CertificateAuthority:
    """A self-signed CA whose certificate is the zone's trust bundle."""

    def __init__(
        self, directory: Path, name: str = "egress-authz demo CA", lifetime: datetime.timedelta = _LIFETIME
    ) -> None:
        self.directory = directory
        self.lifetime = lifetime
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._subject = subject
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(minutes=5))
            .not_valid_after(_now() + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self._key, hashes.SHA256())
        )
        self.bundle = directory / "ca.pem"
        self.bundle.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def _issue(
        self,
        name: str,
        sans: Sequence[x509.GeneralName],
        usages: Sequence[x509.ObjectIdentifier],
        not_before: datetime.datetime,
        not_after: datetime.datetime,
    ) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
            .issuer_name(self._subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        issued = issued_in(self.directory, name)
        issued.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_key(key, issued.key)
        return issued

    def issue_svid(
        self, spiffe_id: str, *, expired: bool = False, server_names: Sequence[str] = ()
    ) -> IssuedCertificate:
        """An X.509 SVID: exactly one URI SAN, the SPIFFE ID; client authentication.
        With ``server_names`` (DNS names or IP addresses) it serves TLS too, as
        SPIRE's SVIDs do (authz's own listener: clients check the name they dial)."""
        start = _now() - (datetime.timedelta(hours=3) if expired else datetime.timedelta(minutes=5))
        end = _now() - datetime.timedelta(hours=1) if expired else _now() + self.lifetime
        name = spiffe_id.removeprefix("spiffe://") + ("-expired" if expired else "")
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id), *_names(server_names)]
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + (
            [ExtendedKeyUsageOID.SERVER_AUTH] if server_names else []
        )
        return self._issue(name, sans, usages, start, end)

    def issue_server(
        self, name: str, dns_names: Sequence[str], ip_addresses: Sequence[str] = ()
    ) -> IssuedCertificate:
        """A TLS server certificate for these names and IP addresses."""
        start = _now() - datetime.timedelta(minutes=5)
        sans = _names([*dns_names, *ip_addresses])
        return self._issue(name, sans, [ExtendedKeyUsageOID.SERVER_AUTH], start, _now() + self.lifetime)


def _names(names: Sequence[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses as subject alternative names."""
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    return sans
