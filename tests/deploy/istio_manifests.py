"""The Istio manifests of envoy/istio as data, and a stand-in for the Envoy
configuration Istio pushes to the egress gateway for them (with the
EnvoyFilter's patches applied as Istio applies them), for the tests to run the
real Envoy on."""

import copy
from typing import Any

import yaml

from tests.deploy.schemas import Manifest, load_documents
from tests.paths import ROOT

ISTIO = ROOT / "envoy" / "istio"
NOT_OBJECTS = {"kustomization.yaml", "meshconfig.yaml"}  # meshconfig.yaml: Helm values for istiod
GATEWAY_SERVICE = "istio-egressgateway.istio-system.svc.cluster.local"
HTTP_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
TCP_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.network.ext_authz.v3.ExtAuthz"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def listed() -> list[str]:
    """The files envoy/istio/kustomization.yaml applies."""
    resources: list[str] = yaml.safe_load((ISTIO / "kustomization.yaml").read_text())["resources"]
    return resources


OBJECTS: list[tuple[str, Manifest]] = [
    (name, document) for name in listed() for document in load_documents((ISTIO / name).read_text())
]


def of_kind(kind: str) -> list[Manifest]:
    """The Istio objects of one kind."""
    return [document for _, document in OBJECTS if document["kind"] == kind]


def only(kind: str) -> Manifest:
    """The one Istio object of a kind (fails when there are more)."""
    (found,) = of_kind(kind)
    return found


def mesh_provider() -> dict[str, Any]:
    """The egress-authz extension provider of meshconfig.yaml."""
    (provider,) = yaml.safe_load((ISTIO / "meshconfig.yaml").read_text())["meshConfig"]["extensionProviders"]
    result: dict[str, Any] = provider
    return result


def base_args() -> list[str]:
    """`authz serve`'s arguments in the base Deployment, which the Istio gateway relies on (--zone, --sni-port)."""
    (deployment,) = load_documents((ROOT / "deploy/kubernetes/base/deployment.yaml").read_text())
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def flag(args: list[str], name: str) -> str:
    """The value after a command-line flag."""
    return args[args.index(name) + 1]


def gateway_routes(service: Manifest) -> list[tuple[str, int]]:
    """(destination host, port) the gateway sends a VirtualService's traffic to."""
    return [
        (item["destination"]["host"], item["destination"]["port"]["number"])
        for kind in ("tcp", "http")
        for route in service["spec"].get(kind, [])
        if all(match.get("gateways") == ["egress-authz-egressgateway"] for match in route["match"])
        for item in route["route"]
    ]


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Protobuf merge, as Istio's MERGE does it: messages field by field, lists appended, scalars replaced."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        elif isinstance(value, list) and isinstance(target.get(key), list):
            target[key] = target[key] + copy.deepcopy(value)
        else:
            target[key] = copy.deepcopy(value)


def istio_ext_authz() -> tuple[dict[str, Any], dict[str, Any]]:
    """The HTTP and network ext_authz filters Istio generates from the provider (istio/istio
    pilot/pkg/security/authz/builder/extauthz.go, generateGRPCConfig)."""
    grpc = mesh_provider()["envoyExtAuthzGrpc"]
    cluster = f"outbound|{grpc['port']}||{grpc['service']}"
    service = {
        "envoy_grpc": {"cluster_name": cluster, "authority": cluster.replace("|", "_.")},
        "timeout": grpc["timeout"],
    }

    def enabled(rbac: str) -> dict[str, Any]:
        return {
            "filter": rbac,
            "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": "istio-ext-authz"}},
        }

    http = {
        "@type": HTTP_EXT_AUTHZ,
        "grpc_service": service,
        "failure_mode_allow": grpc["failOpen"],
        "status_on_error": {"code": int(grpc["statusOnError"])},
        "transport_api_version": "V3",
        "filter_enabled_metadata": enabled("envoy.filters.http.rbac"),
    }
    tcp = {
        "@type": TCP_EXT_AUTHZ,
        "stat_prefix": "tcp.",
        "grpc_service": service,
        "failure_mode_allow": grpc["failOpen"],
        "transport_api_version": "V3",
        "filter_enabled_metadata": enabled("envoy.filters.network.rbac"),
    }
    return http, tcp


def static_cluster(name: str, port: int, http2: bool = False) -> dict[str, Any]:
    """An Envoy cluster of one endpoint on 127.0.0.1 (Istio's are EDS; validation needs no difference)."""
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def istio_gateway() -> dict[str, Any]:
    """An Envoy bootstrap standing in for what Istio pushes to the egress gateway for these objects:
    per Gateway server, a filter chain matched by SNI, with the HTTP or network ext_authz of the
    CUSTOM policy (not Istio's TLS contexts, which the patches do not touch)."""
    http_authz, tcp_authz = istio_ext_authz()
    grpc = mesh_provider()["envoyExtAuthzGrpc"]
    listeners: dict[int, dict[str, Any]] = {}
    clusters = [static_cluster(f"outbound|{grpc['port']}||{grpc['service']}", grpc["port"], http2=True)]
    routes = {
        host: target
        for service in of_kind("VirtualService")
        for host in service["spec"]["hosts"]
        for target in gateway_routes(service)
    }
    for server in only("Gateway")["spec"]["servers"]:
        port = server["port"]["number"]
        listener = listeners.setdefault(
            port,
            {
                "name": f"0.0.0.0_{port}",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000 + port}},
                "listener_filters": [
                    {
                        "name": "envoy.filters.listener.tls_inspector",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
                        },
                    }
                ],
                "filter_chains": [],
            },
        )
        (host,) = server["hosts"]
        upstream = f"outbound|{routes[host][1]}||{routes[host][0]}"
        clusters.append(static_cluster(upstream, routes[host][1]))
        if server["port"]["protocol"] == "TLS":
            filters = [
                {"name": "envoy.filters.network.ext_authz", "typed_config": copy.deepcopy(tcp_authz)},
                {
                    "name": "envoy.filters.network.tcp_proxy",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": host,
                        "cluster": upstream,
                    },
                },
            ]
        else:
            filters = [
                {
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": HCM,
                        "stat_prefix": host,
                        "route_config": {
                            "virtual_hosts": [
                                {
                                    "name": f"{host}:{port}",
                                    "domains": [host],
                                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": upstream}}],
                                }
                            ]
                        },
                        "http_filters": [
                            {
                                "name": "envoy.filters.http.ext_authz",
                                "typed_config": copy.deepcopy(http_authz),
                            },
                            {
                                "name": "envoy.filters.http.router",
                                "typed_config": {
                                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                },
                            },
                        ],
                    },
                }
            ]
        listener["filter_chains"].append({"filter_chain_match": {"server_names": [host]}, "filters": filters})
    return {"static_resources": {"listeners": list(listeners.values()), "clusters": clusters}}


def merge_filter(target: dict[str, Any], value: dict[str, Any]) -> None:
    assert value["name"] == target["name"]
    assert value["typed_config"]["@type"] == target["typed_config"]["@type"], (
        "MERGE needs the filter's own type"
    )
    merge(target["typed_config"], value["typed_config"])


def apply_patch(bootstrap: dict[str, Any], patch: dict[str, Any]) -> int:
    """Apply one EnvoyFilter patch as Istio would; the number of places it applied to."""
    assert patch["patch"]["operation"] == "MERGE"
    assert patch["match"]["context"] == "GATEWAY"
    value = patch["patch"]["value"]
    applied = 0
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network in chain["filters"]:
                if patch["applyTo"] == "VIRTUAL_HOST":
                    for virtual_host in (
                        network["typed_config"].get("route_config", {}).get("virtual_hosts", [])
                    ):
                        merge(virtual_host, value)
                        applied += 1
                    continue
                wanted = patch["match"]["listener"]["filterChain"]
                sni = wanted.get("sni")
                if network["name"] != wanted["filter"]["name"] or (
                    sni and sni not in chain["filter_chain_match"]["server_names"]
                ):
                    continue
                if patch["applyTo"] == "NETWORK_FILTER":
                    merge_filter(network, value)
                    applied += 1
                elif patch["applyTo"] == "HTTP_FILTER":
                    for http in network["typed_config"]["http_filters"]:
                        if http["name"] == wanted["filter"]["subFilter"]["name"]:
                            merge_filter(http, value)
                            applied += 1
    return applied


def patched_gateway(envoy_filter: Manifest) -> dict[str, Any]:
    bootstrap = istio_gateway()
    for patch in envoy_filter["spec"]["configPatches"]:
        assert apply_patch(bootstrap, patch) > 0, (
            f"this patch applies to nothing on the gateway: {patch['match']}"
        )
    return bootstrap
