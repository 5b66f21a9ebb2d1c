"""Who may call authz, as deploy/kubernetes wires it: the standalone gateway
calls authz's own mTLS listener with its SVID and accepts only authz's; authz
admits only that SVID; under Istio the mesh's mTLS does it (a sidecar, STRICT
peer authentication, only the egress gateway's principal on the gRPC port);
the kubelet's probes reach a port that needs no client certificate, and every
certificate a pod mounts is readable by its user and no key by the world."""

from typing import Any

import pytest
import yaml

from tests.deploy.istio_manifests import GATEWAY_SERVICE
from tests.deploy.kubernetes_manifests import (
    OVERLAYS,
    authz,
    container,
    flag,
    labels_match,
    mounted_files,
    needs_kubectl,
    port_of,
    spiffe_id,
)
from tests.deploy.schemas import Manifest, by_kind, one

ENVOY = "overlays/envoy-gateway"
ISTIO = "overlays/istio-egress-gateway"

pytestmark = needs_kubectl


def _probe_ports(authz_container: dict[str, Any]) -> set[int]:
    ports = set()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        handler = {
            key: value
            for key, value in authz_container[probe].items()
            if key in ("grpc", "httpGet", "tcpSocket", "exec")
        }
        assert set(handler) == {"grpc"}, probe
        ports.add(handler["grpc"]["port"])
    return ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_probes_ask_grpc_health_where_no_client_certificate_is_needed(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    """The kubelet cannot show a certificate: with authz's own mTLS the probes go to the plaintext
    health-only listener, otherwise to the serving port (under Istio, rewritten to the sidecar agent)."""
    served = container(authz(rendered[overlay]), "authz")
    args = served["args"]
    listen = port_of(flag(args, "--listen"))
    if "--tls-cert" in args:
        expected = port_of(flag(args, "--health-listen"))
        assert expected != listen
    else:
        expected = listen
    assert _probe_ports(served) == {expected}
    assert served["readinessProbe"]["failureThreshold"] == 1  # out of the endpoints as soon as it drains
    assert expected in {port["containerPort"] for port in served["ports"]}


def test_the_envoy_overlays_authz_serves_mtls_to_its_gateway_only(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = rendered[ENVOY]
    deployment = authz(manifests)
    served = container(deployment, "authz")
    args = served["args"]
    files = mounted_files(manifests, deployment, "authz")
    assert files[flag(args, "--tls-cert")] == "secret egress-authz-tls tls.crt"
    assert files[flag(args, "--tls-key")] == "secret egress-authz-tls tls.key"
    assert files[flag(args, "--client-ca")] == "secret egress-authz-tls ca.crt"
    gateway = one(manifests, "Deployment", "egress-gateway")
    assert flag(args, "--allow-caller") == spiffe_id(gateway)
    # The health-only port is for the kubelet alone: no Service names it, the NetworkPolicy opens it
    # to no one (the pod's own node, where the kubelet runs, is always admitted).
    health = port_of(flag(args, "--health-listen"))
    assert flag(args, "--health-listen") == f"0.0.0.0:{health}"  # the kubelet dials the pod's address
    named = {port["name"]: port["containerPort"] for port in served["ports"]}
    service = one(manifests, "Service", "egress-authz")
    assert health not in {named[port["targetPort"]] for port in service["spec"]["ports"]}
    policy = one(manifests, "NetworkPolicy", "egress-authz")
    assert all(health not in {port["port"] for port in rule["ports"]} for rule in policy["spec"]["ingress"])


def test_the_envoy_gateway_calls_authz_with_its_svid_and_accepts_only_authzs(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = rendered[ENVOY]
    gateway = one(manifests, "Deployment", "egress-gateway")
    files = mounted_files(manifests, gateway, "envoy")
    config = yaml.safe_load(files[flag(container(gateway, "envoy")["args"], "-c")])
    (cluster,) = [c for c in config["staticResources"]["clusters"] if c["name"] == "egress_authz"]
    context = cluster["transportSocket"]["typedConfig"]["commonTlsContext"]
    (certificate,) = context["tlsCertificates"]
    assert files[certificate["certificateChain"]["filename"]] == "secret egress-gateway-svid tls.crt"
    assert files[certificate["privateKey"]["filename"]] == "secret egress-gateway-svid tls.key"
    validation = context["validationContext"]
    assert files[validation["trustedCa"]["filename"]] == "secret egress-gateway-trust ca.pem"
    assert validation["matchTypedSubjectAltNames"] == [
        {"sanType": "URI", "matcher": {"exact": spiffe_id(authz(manifests))}}
    ]
    assert context["alpnProtocols"] == ["h2"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_file_is_readable_by_its_container_and_no_key_by_the_world(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    """The kubelet writes a Secret's files owned by root, group fsGroup (root without one), with the
    volume's mode: a non-root container reads them only through the group or the world bits."""
    for deployment in by_kind(rendered[overlay], "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        fs_group = pod["securityContext"].get("fsGroup")
        owner_group = 0 if fs_group is None else fs_group
        for user in pod["containers"]:
            context = {**pod["securityContext"], **user["securityContext"]}
            groups = {context["runAsGroup"], *pod["securityContext"].get("supplementalGroups", [])}
            groups |= set() if fs_group is None else {fs_group}
            for mount in user["volumeMounts"]:
                secret = volumes[mount["name"]].get("secret")
                for item in secret["items"] if secret else []:
                    mode = item.get("mode", secret.get("defaultMode", 0o644))
                    where = f"{deployment['metadata']['name']}/{user['name']}: {mount['mountPath']}/{item['path']}"
                    assert mode & 0o004 or (mode & 0o040 and owner_group in groups), f"{where} is unreadable"
                    if item["key"].endswith(".key"):
                        assert not mode & 0o004, f"{where} is world-readable"


def test_the_istio_overlay_puts_authz_in_the_mesh_and_admits_only_the_egress_gateway(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = rendered[ISTIO]
    deployment = authz(manifests)
    namespace = deployment["metadata"]["namespace"]
    labels = one(manifests, "Namespace", namespace)["metadata"]["labels"]
    assert labels["istio-injection"] == "enabled"
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"  # kept: Istio CNI meets it
    template = deployment["spec"]["template"]
    # Up through authz's preStop wait and drain: a native sidecar stops after authz.
    assert template["metadata"]["annotations"]["sidecar.istio.io/nativeSidecar"] == "true"
    served = container(deployment, "authz")
    assert "--tls-cert" not in served["args"]  # the sidecar terminates the mesh's mTLS
    grpc = port_of(flag(served["args"], "--listen"))
    metrics = {port["containerPort"] for port in served["ports"] if port["name"].startswith("metrics-")}

    (peer,) = by_kind(manifests, "PeerAuthentication")
    assert peer["metadata"]["namespace"] == namespace
    selector = peer["spec"]["selector"]["matchLabels"]
    assert selector  # Istio's CEL rule: portLevelMtls requires a selector
    assert labels_match(selector, template["metadata"]["labels"])
    assert peer["spec"]["mtls"] == {"mode": "STRICT"}
    levels = {int(port): level for port, level in peer["spec"]["portLevelMtls"].items()}
    assert levels == {port: {"mode": "PERMISSIVE"} for port in metrics}  # Prometheus from outside the mesh

    (allow,) = [
        p for p in by_kind(manifests, "AuthorizationPolicy") if p["metadata"]["namespace"] == namespace
    ]
    assert allow["spec"]["action"] == "ALLOW"
    assert labels_match(allow["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
    rules = allow["spec"]["rules"]
    assert all(rule.get("to") for rule in rules), "a rule without `to` admits every port"

    def ports(rule: dict[str, Any]) -> set[int]:
        return {int(port) for to in rule["to"] for port in to["operation"]["ports"]}

    (calls,) = [rule for rule in rules if grpc in ports(rule)]
    # istio/gateway's Helm chart names the Service and the service account after the release.
    account, gateway_namespace = GATEWAY_SERVICE.split(".")[:2]
    assert calls["from"] == [
        {"source": {"principals": [f"cluster.local/ns/{gateway_namespace}/sa/{account}"]}}
    ]
    assert ports(calls) == {grpc}
    assert all(ports(rule) <= metrics for rule in rules if rule is not calls)
    (admitted,) = one(manifests, "NetworkPolicy", "egress-authz")["spec"]["ingress"][0]["from"]
    assert admitted["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": gateway_namespace}
