"""The adversarial corpus (tests/data/adversarial/corpus.yaml): its cases,
each case's CheckRequest, and the gateway settings the corpus assumes (the
lab's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from authz.ext_authz.attributes import GatewaySettings
from authz.ext_authz.check import INVALID_ARGUMENT, RESOURCE_EXHAUSTED
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest
from authz.gateway.lab import GATEWAY_NAME, ZONE
from tests.paths import ROOT

__all__ = ["CASES", "GATEWAY_CASES", "SERVE_ARGS", "SETTINGS", "Case", "Gateway"]

CORPUS = ROOT / "tests" / "data" / "adversarial" / "corpus.yaml"
SETTINGS = GatewaySettings.create(gateway_names=[GATEWAY_NAME], zone=ZONE, sni_port=443)
SERVE_ARGS = ("--zone", ZONE, "--gateway-name", GATEWAY_NAME, "--sni-port", "443")
GRPC_STATUS = {"RESOURCE_EXHAUSTED": RESOURCE_EXHAUSTED, "INVALID_ARGUMENT": INVALID_ARGUMENT}
_CASE_KEYS = {"name", "why", "check", "expect", "gateway", "no_gateway"}
_CHECK_KEYS = {"principal", "sni", "zone", "listener_port", "http", "pad_header_bytes"}
_GATEWAY_KEYS = {
    "listener",
    "identity",
    "host",
    "sni",
    "method",
    "path",
    "headers",
    "pad_header_bytes",
    "expect",
}


@dataclass(frozen=True)
class Gateway:
    """The attempt as a client sends it to the real Envoy gateway."""

    listener: str
    identity: str | None
    host: str
    sni: str | None
    method: str
    path: str
    headers: tuple[str, ...]
    status: int | None
    reason: str | None
    details: str | None  # Envoy's RESPONSE_CODE_DETAILS, where Envoy refused it itself


@dataclass(frozen=True)
class Case:
    name: str
    why: str
    check: dict[str, Any]
    verdict: str | None = None
    reason: str | None = None
    grpc_status: int | None = None
    gateway: Gateway | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def check_request(self) -> CheckRequest:
        """The CheckRequest Envoy would send for the case."""
        check = CheckRequest()
        attributes, spec = check.attributes, self.check
        if "principal" in spec:
            attributes.source.principal = spec["principal"]
        if "sni" in spec:
            attributes.tls_session.sni = spec["sni"]
        if "zone" in spec:
            attributes.context_extensions["zone"] = spec["zone"]
        if "listener_port" in spec:
            attributes.destination.address.socket_address.address = "127.0.0.1"
            attributes.destination.address.socket_address.port_value = spec["listener_port"]
        if "http" in spec:
            http = attributes.request.http
            for key in ("method", "host", "path", "scheme"):
                if key in spec["http"]:
                    setattr(http, key, spec["http"][key])
            for key, value in self.headers.items():
                http.headers[key] = value
            if "pad_header_bytes" in spec:
                http.headers["x-padding"] = "p" * spec["pad_header_bytes"]
        return check


def _gateway(case: dict[str, Any]) -> Gateway | None:
    spec = case.get("gateway")
    if spec is None:
        return None
    unknown = set(spec) - _GATEWAY_KEYS
    assert not unknown, f"{case['name']}: unknown gateway keys {unknown}"
    check = case["check"]
    http = check.get("http", {})
    headers = [f"{key}: {value}" for key, value in http.get("headers", {}).items()]
    if "pad_header_bytes" in spec:
        headers.append(f"x-padding: {'p' * spec['pad_header_bytes']}")
    host = spec.get("host") or http.get("host") or check.get("sni")
    assert host, f"{case['name']}: the gateway case names no host"
    return Gateway(
        listener=spec["listener"],
        identity=spec.get("identity", check.get("principal")),
        host=host,
        sni=spec.get("sni"),
        method=spec.get("method", http.get("method", "GET")),
        path=spec.get("path", http.get("path", "/")),
        headers=tuple(headers),
        status=spec["expect"]["status"],
        reason=spec["expect"].get("reason"),
        details=spec["expect"].get("details"),
    )


def _case(raw: dict[str, Any]) -> Case:
    unknown = (set(raw) - _CASE_KEYS) | (set(raw["check"]) - _CHECK_KEYS)
    assert not unknown, f"{raw['name']}: unknown keys {unknown}"
    assert ("gateway" in raw) != ("no_gateway" in raw), (
        f"{raw['name']}: say how it goes through Envoy, or why not"
    )
    expect = raw["expect"]
    return Case(
        name=raw["name"],
        why=raw["why"],
        check=raw["check"],
        verdict=expect.get("verdict"),
        reason=expect.get("reason"),
        grpc_status=GRPC_STATUS[expect["grpc_status"]] if "grpc_status" in expect else None,
        gateway=_gateway(raw),
        headers=dict(raw["check"].get("http", {}).get("headers", {})),
    )


CASES = [_case(raw) for raw in yaml.safe_load(CORPUS.read_text())["cases"]]
GATEWAY_CASES = [case for case in CASES if case.gateway is not None]
