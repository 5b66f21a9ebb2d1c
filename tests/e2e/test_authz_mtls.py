"""authz's own mTLS listener, on every transport: only the allowed gateway gets
decisions; certificates rotate while checks flow."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from authz import EgressRequest
from authz.ext_authz.check import SERVICE_NAME
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest, CheckResponse
from authz.gateway.lab import authz_channel_credentials
from authz.gateway.pki import CertificateAuthority, IssuedCertificate
from authz.testing import check_request
from tests.e2e.conftest import EXAMPLES, Served, authz_serve, free_port, wait_serving

GATEWAY = "spiffe://prod.example.org/ns/egress/sa/egress-gateway"
AUTHZ = "spiffe://prod.example.org/ns/egress/sa/egress-authz"
INTRUDER = "spiffe://prod.example.org/ns/ci/sa/ci-runner"  # a valid SVID of the mesh, not the gateway
GITHUB = EgressRequest("spiffe://prod.example.org/ns/ci/sa/ci-runner", sni="github.com", port=443)


@pytest.fixture(params=["grpcio", "pyvoy"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Mtls:
    ca: CertificateAuthority
    served: Served
    target: str
    health: str
    metrics: int
    certificate: Path  # what authz serves, replaced by rename to rotate
    key: Path

    def channel(self, svid: IssuedCertificate | None) -> grpc.Channel:
        return grpc.secure_channel(self.target, authz_channel_credentials(self.ca.bundle, svid))

    def served_serial(self, svid: IssuedCertificate) -> int:
        """The serial of the certificate a new connection gets."""
        context = ssl.create_default_context(cafile=str(self.ca.bundle))
        context.load_cert_chain(svid.certificate, svid.key)
        context.set_alpn_protocols(["h2"])
        host, _, port = self.target.rpartition(":")
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


def _replace(source: Path, target: Path) -> None:
    """As SPIRE's helper writes: a new file renamed over the old one."""
    temporary = target.with_suffix(".new")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


@pytest.fixture
def mtls(transport: str, tmp_path: Path) -> Iterator[Mtls]:
    ca = CertificateAuthority(tmp_path / "ca", "authz test CA")
    issued = ca.issue_svid(AUTHZ, server_names=["127.0.0.1"])
    served = tmp_path / "served"
    served.mkdir()
    certificate, key = served / "authz.pem", served / "authz.key"
    _replace(issued.certificate, certificate)
    _replace(issued.key, key)
    target, health, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", free_port()
    with authz_serve(
        "--policy", str(EXAMPLES), "--transport", transport, "--listen", target,
        "--tls-cert", str(certificate), "--tls-key", str(key), "--client-ca", str(ca.bundle),
        "--allow-caller", GATEWAY, "--health-listen", health, "--metrics-port", str(metrics),
    ) as process:  # fmt: skip
        wait_serving(health)
        yield Mtls(ca, process, target, health, metrics, certificate, key)


def _check(channel: grpc.Channel) -> CheckResponse:
    stub = channel.unary_unary(
        f"/{SERVICE_NAME}/Check",
        request_serializer=CheckRequest.SerializeToString,
        response_deserializer=CheckResponse.FromString,
    )
    response: CheckResponse = stub(check_request(GITHUB), timeout=5)
    return response


def _refused(metrics_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("egress_authz_callers_refused_total{"):
            cause = line.split('cause="', 1)[1].split('"', 1)[0]
            counts[cause] = float(line.rsplit(" ", 1)[1])
    return counts


def test_only_the_allowed_gateway_gets_decisions(mtls: Mtls) -> None:
    with mtls.channel(mtls.ca.issue_svid(GATEWAY)) as channel:
        assert dict(_check(channel).dynamic_metadata)["reason"] == "ALLOWED_BY_RULE"
    with mtls.channel(mtls.ca.issue_svid(INTRUDER)) as channel, pytest.raises(grpc.RpcError) as intruder:
        _check(channel)
    assert intruder.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "ALLOWED" not in str(intruder.value.details())
    # No certificate: grpc core fails the handshake (UNAVAILABLE); Envoy (pyvoy) lets the
    # handshake end and the app refuses the call (UNAUTHENTICATED). Never a decision.
    with mtls.channel(None) as channel, pytest.raises(grpc.RpcError) as anonymous:
        _check(channel)
    assert anonymous.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    # The plaintext health listener answers health, never a Check.
    with grpc.insecure_channel(mtls.health) as channel, pytest.raises(grpc.RpcError) as plain:
        _check(channel)
    assert plain.value.code() == grpc.StatusCode.UNAUTHENTICATED
    deadline = time.monotonic() + 10
    while (refused := _refused(mtls.metrics)).get("not_allowed", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert refused["not_allowed"] >= 1
    assert refused["no_certificate"] >= 1  # the health listener's Check, at least
    decisions = [line for line in mtls.served.stderr.splitlines() if "refused a Check from" in line]
    assert any(INTRUDER in line for line in decisions)


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_rotated_certificate_is_served_while_checks_flow(mtls: Mtls) -> None:
    gateway = mtls.ca.issue_svid(GATEWAY)
    before = mtls.served_serial(gateway)
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def flow() -> None:  # one connection, kept open across the rotation
        with mtls.channel(gateway) as channel:
            while not stop.is_set():
                try:
                    _check(channel)
                    answered[0] += 1
                except grpc.RpcError as error:
                    failures.append(f"{error.code()}: {error.details()}")

    thread = threading.Thread(target=flow)
    thread.start()
    try:
        _wait_for(lambda: answered[0] >= 20)
        new = mtls.ca.issue_svid(AUTHZ, server_names=["127.0.0.1"])
        _replace(new.key, mtls.key)
        _replace(new.certificate, mtls.certificate)
        deadline = time.monotonic() + 15
        serial = before
        while serial == before and time.monotonic() < deadline:
            time.sleep(0.1)
            serial = mtls.served_serial(gateway)
        assert serial != before, "new connections still get the old certificate"
        assert serial == x509.load_pem_x509_certificate(mtls.certificate.read_bytes()).serial_number
        count = answered[0]
        _wait_for(lambda: answered[0] >= count + 20)
    finally:
        stop.set()
        thread.join(10)
    assert failures == []
