"""A gateway started elsewhere (the compose demo, a test cluster): the
tour's clients, with the certificates `authz lab certs` issued."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from authz.gateway.clients import GatewayClients
from authz.gateway.pki import IssuedCertificate, issued_in

__all__ = ["RemoteGateway"]


class RemoteGateway(GatewayClients):
    """The gateway at ``host`` with the listeners at ``ports`` (http, sni, connect)."""

    def __init__(
        self, host: str, ports: Mapping[str, int], certs: Path, access_log: Path | None = None
    ) -> None:
        self.gateway_host = host
        self.ports = dict(ports)
        self.certs = certs
        self.ca_bundle = certs / "ca.pem"
        self.access_log = access_log

    def svid(self, identity: str) -> IssuedCertificate:
        issued = issued_in(self.certs, identity)
        if not issued.certificate.exists():
            raise FileNotFoundError(
                f"no SVID for {identity} in {self.certs}: issue it with `authz lab certs`"
            )
        return issued

    def access_log_records(self) -> list[dict[str, Any]]:
        if self.access_log is None or not self.access_log.exists():
            return []
        lines = self.access_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip().endswith("}")]
