"""authz's own mTLS listener: its certificate, key and the CA its callers'
certificates must chain to, reread when the files change.

SPIRE and cert-manager rotate certificates by writing new files (Kubernetes
swaps a ``..data`` symlink): new handshakes get the new certificate,
established connections keep theirs. A half-written change (a certificate
whose key has not arrived yet) is not applied: the last good pair serves
until the files agree.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = ["TlsFiles", "grpcio_credentials"]

log = logging.getLogger("authz.server")


@dataclass(frozen=True, slots=True)
class TlsFiles:
    certificate: str  # PEM: authz's certificate (chain)
    key: str  # PEM: its private key
    client_ca: str  # PEM: the CA bundle callers' certificates must chain to

    def stamp(self) -> tuple[int, ...]:
        """What changes when a file does (inode and modification time: a rename counts)."""
        stamps: list[int] = []
        for name in (self.certificate, self.key, self.client_ca):
            status = Path(name).stat()
            stamps += (status.st_ino, status.st_mtime_ns, status.st_size)
        return tuple(stamps)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(certificate, key, CA) once they agree; raises ValueError (naming the
        files) when the key does not match the certificate or a file is not PEM."""
        certificate, key, ca = (Path(n).read_bytes() for n in (self.certificate, self.key, self.client_ca))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.certificate, self.key)
            context.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as error:
            raise ValueError(
                f"{self.certificate}, {self.key}, {self.client_ca}: not a matching certificate, key and CA"
                f" ({error})"
            ) from error
        return certificate, key, ca


def grpcio_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server credentials that require a client certificate chaining to the CA,
    and pick up new files before the next handshake (grpc core asks the
    fetcher; None keeps what it has). Raises ValueError for unusable files."""
    certificate, key, ca = files.read()
    applied: list[tuple[int, ...]] = [files.stamp()]
    refused: list[tuple[int, ...]] = [()]

    def configuration(cert: bytes, private: bytes, bundle: bytes) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(private, cert)], root_certificates=bundle)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = files.stamp()
        except OSError:
            return None  # a file is being replaced: the next handshake looks again
        if stamp in (applied[0], refused[0]):
            return None
        try:
            new = files.read()
        except (OSError, ValueError) as error:
            refused[0] = stamp  # said once, until the files change again
            log.warning("TLS files changed but are not usable; serving the last good ones: %s", error)
            return None
        applied[0] = stamp
        log.info("TLS certificate reloaded from %s", files.certificate)
        return configuration(*new)

    # The stub's fetcher type forgets None, which grpc documents as "no change".
    fetcher: Callable[[], grpc.ServerCertificateConfiguration] = fetch  # type: ignore[assignment]
    return grpc.dynamic_ssl_server_credentials(
        configuration(certificate, key, ca), fetcher, require_client_authentication=True
    )
