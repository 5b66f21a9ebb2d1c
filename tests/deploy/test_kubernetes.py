"""deploy/kubernetes rendered by the real `kubectl kustomize`, every object
validated against the Kubernetes API schemas (kubernetes-validate, strict) or
Istio's CRDs, and the properties the deployment depends on asserted: replicas,
a locked-down pod, workers matched to cores, a shutdown that fits the drain,
and only the gateway let in (test_kubernetes_mtls.py: who may call authz, and
the probes)."""

import copy
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.kubernetes_manifests import (
    KUBERNETES,
    OVERLAYS,
    expanded_args,
    is_prometheus_operator,
    mounted_files,
    needs_kubectl,
)
from tests.deploy.kubernetes_manifests import authz as _authz
from tests.deploy.kubernetes_manifests import container as _container
from tests.deploy.kubernetes_manifests import flag as _flag
from tests.deploy.kubernetes_manifests import is_istio as _is_istio
from tests.deploy.kubernetes_manifests import labels_match as _labels_match
from tests.deploy.schemas import (
    IstioSchemas,
    Manifest,
    by_kind,
    kubernetes_problems,
    load_documents,
    one,
    render,
)
from tests.paths import EXAMPLE_FILES, ROOT

POLICY_PATH = "/etc/egress-authz/policies"

pytestmark = needs_kubectl


def _cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_kubernetes_object_is_valid(
    rendered: dict[str, list[Manifest]], schema_versions: list[str], overlay: str
) -> None:
    problems = {
        f"{manifest['kind']}/{manifest['metadata']['name']}": found
        for manifest in rendered[overlay]
        if not _is_istio(manifest)
        and not is_prometheus_operator(manifest)  # test_monitoring.py: against its CRDs
        and (found := [f"{v}: {p}" for v in schema_versions for p in kubernetes_problems(manifest, v)])
    }
    assert problems == {}


def test_every_rendered_istio_object_is_valid(
    rendered: dict[str, list[Manifest]], istio: IstioSchemas
) -> None:
    objects = [manifest for manifest in rendered["overlays/istio-egress-gateway"] if _is_istio(manifest)]
    assert objects
    problems = {
        f"{manifest['kind']}/{manifest['metadata']['name']}": found
        for manifest in objects
        if (found := [str(problem) for problem in istio.problems(manifest)])
    }
    assert problems == {}


@pytest.mark.parametrize(
    ("path", "value", "said"),
    [
        (
            ["spec", "template", "spec", "containers", 0, "securityContext"],
            {"readOnlyRootFileSystem": True},
            "readOnlyRootFileSystem",
        ),
        (["spec"], {"replicas": "two"}, "'two' is not of type 'integer'"),
        (
            ["spec", "template", "spec", "containers", 0, "readinessProbe"],
            {"grpc": {"port": "grpc"}},
            "is not of type 'integer'",
        ),
    ],
    ids=["misspelled field", "replicas as a string", "grpc probe on a named port"],
)
def test_the_kubernetes_validator_refuses_a_broken_deployment(
    rendered: dict[str, list[Manifest]],
    schema_versions: list[str],
    path: list[str | int],
    value: dict[str, Any],
    said: str,
) -> None:
    broken = copy.deepcopy(_authz(rendered["base"]))
    target: Any = broken
    for step in path:
        target = target[step]
    target.update(value)
    for version in schema_versions:
        problems = kubernetes_problems(broken, version)
        assert any(said in problem for problem in problems), problems


def test_authz_runs_replicated_and_spread(rendered: dict[str, list[Manifest]]) -> None:
    deployment = _authz(rendered["base"])
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(_labels_match(c["labelSelector"]["matchLabels"], labels) for c in spread)
    assert _container(deployment, "authz")["image"] == "ghcr.io/example/egress-authz:0.1.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_locked_down(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    for deployment in by_kind(rendered[overlay], "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        account = one(rendered[overlay], "ServiceAccount", pod["serviceAccountName"])
        assert account["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            context = {**pod["securityContext"], **container["securityContext"]}
            assert context["runAsNonRoot"] is True
            assert context["runAsUser"] > 0
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    authz = _authz(rendered[overlay])
    assert _container(authz, "authz")["securityContext"]["runAsUser"] == 10001
    mounts = {m["mountPath"]: m["name"] for m in _container(authz, "authz")["volumeMounts"]}
    volumes = {v["name"]: v for v in authz["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_workers_match_the_cpu_limit(rendered: dict[str, list[Manifest]]) -> None:
    container = _container(_authz(rendered["base"]), "authz")
    workers = int(_flag(container["args"], "--workers"))
    assert workers >= 2
    assert _cores(container["resources"]["limits"]["cpu"]) == workers
    assert _cores(container["resources"]["requests"]["cpu"]) == workers  # Guaranteed QoS, whole cores


def test_the_shutdown_fits_the_drain(rendered: dict[str, list[Manifest]]) -> None:
    deployment = _authz(rendered["base"])
    container = _container(deployment, "authz")
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = float(_flag(container["args"], "--grace"))
    assert pre_stop >= 5  # endpoint removal reaches the gateways before SIGTERM
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pre_stop + grace


def test_authz_serves_the_policies_configmap_with_every_policy(rendered: dict[str, list[Manifest]]) -> None:
    deployment = _authz(rendered["base"])
    container = _container(deployment, "authz")
    assert _flag(container["args"], "--policy") == POLICY_PATH
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == POLICY_PATH]
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    configmap = one(rendered["base"], "ConfigMap", volume["configMap"]["name"])
    assert (
        configmap["metadata"]["name"] == "egress-authz-policies"
    )  # no hash suffix: updated in place, hot-reloaded
    assert configmap["data"] == {path.name: path.read_text() for path in EXAMPLE_FILES}


def test_the_policies_generator_lists_every_policy_file() -> None:
    kustomization = load_documents((ROOT / "policies" / "kustomization.yaml").read_text())[0]
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "egress-authz-policies"
    assert sorted(generator["files"]) == [path.name for path in EXAMPLE_FILES]
    assert generator["options"]["disableNameSuffixHash"] is True


def test_the_service_pdb_and_hpa_cover_the_pods(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["base"]
    deployment = _authz(manifests)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(manifests, "Service", "egress-authz")
    assert _labels_match(service["spec"]["selector"], labels)
    (grpc,) = service["spec"]["ports"]
    assert (grpc["name"], grpc["port"], grpc["appProtocol"]) == ("grpc", 9191, "grpc")
    assert "clusterIP" not in service["spec"]  # Istio's provider needs a ClusterIP Service
    budget = one(manifests, "PodDisruptionBudget", "egress-authz")
    assert budget["spec"]["minAvailable"] == 1
    assert _labels_match(budget["spec"]["selector"]["matchLabels"], labels)
    scaler = one(manifests, "HorizontalPodAutoscaler", "egress-authz")
    assert scaler["apiVersion"] == "autoscaling/v2"
    assert scaler["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "egress-authz",
    }
    assert scaler["spec"]["minReplicas"] >= 2
    (metric,) = scaler["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"


def test_each_workers_metrics_reach_the_scraper(rendered: dict[str, list[Manifest]]) -> None:
    """Worker i serves its metrics on --metrics-port + i, bound for the scraper; the container,
    the headless metrics Service and the NetworkPolicy (monitoring namespace only) name those ports."""
    manifests = rendered["base"]
    deployment = _authz(manifests)
    authz = _container(deployment, "authz")
    args = authz["args"]
    first, workers = int(_flag(args, "--metrics-port")), int(_flag(args, "--workers"))
    assert _flag(args, "--metrics-bind") == "0.0.0.0"
    exposed = {port["containerPort"] for port in authz["ports"] if port["name"].startswith("metrics-")}
    assert exposed == {first + i for i in range(workers)}
    assert [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]] == ["authz"]
    service = one(manifests, "Service", "egress-authz-metrics")
    assert service["spec"]["clusterIP"] == "None"
    assert {port["port"] for port in service["spec"]["ports"]} == exposed
    policy = one(manifests, "NetworkPolicy", "egress-authz")
    (scrape,) = [rule for rule in policy["spec"]["ingress"] if {p["port"] for p in rule["ports"]} == exposed]
    assert scrape["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def _admitted_to_authz(manifests: list[Manifest]) -> list[dict[str, Any]]:
    """The peers the NetworkPolicy admits to authz's gRPC port; checks that nothing else is open."""
    policy = one(manifests, "NetworkPolicy", "egress-authz")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert _labels_match(
        policy["spec"]["podSelector"]["matchLabels"],
        _authz(manifests)["spec"]["template"]["metadata"]["labels"],
    )
    rules = policy["spec"]["ingress"]
    assert all(rule.get("from") and rule.get("ports") for rule in rules), (
        "a rule without from or ports admits everyone"
    )
    (grpc,) = [rule for rule in rules if {p["port"] for p in rule["ports"]} == {9191}]
    assert all(9191 not in {p["port"] for p in rule["ports"]} for rule in rules if rule is not grpc)
    peers: list[dict[str, Any]] = grpc["from"]
    return peers


def test_the_base_admits_no_gateway_until_an_overlay_names_one(rendered: dict[str, list[Manifest]]) -> None:
    (peer,) = _admitted_to_authz(rendered["base"])
    assert set(peer["namespaceSelector"]["matchLabels"].values()) == {"set-by-overlay"}


def test_the_istio_overlay_admits_only_istios_egress_gateway(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["overlays/istio-egress-gateway"]
    assert _admitted_to_authz(manifests) == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}},
            "podSelector": {"matchLabels": {"istio": "egressgateway"}},
        }
    ]
    istio_objects = {(m["kind"], m["metadata"]["name"]) for m in manifests if _is_istio(m)}
    listed = render(ROOT / "envoy" / "istio")
    own = load_documents((KUBERNETES / "overlays/istio-egress-gateway/mesh-mtls.yaml").read_text())
    assert istio_objects == {(m["kind"], m["metadata"]["name"]) for m in [*listed, *own]}
    (custom,) = [p for p in by_kind(manifests, "AuthorizationPolicy") if p["spec"]["action"] == "CUSTOM"]
    assert custom["spec"]["selector"]["matchLabels"] == {"istio": "egressgateway"}


def test_the_envoy_overlay_admits_only_its_gateway(rendered: dict[str, list[Manifest]]) -> None:
    manifests = rendered["overlays/envoy-gateway"]
    gateway = one(manifests, "Deployment", "egress-gateway")
    namespace = gateway["metadata"]["namespace"]
    (peer,) = _admitted_to_authz(manifests)
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": namespace}
    assert peer["podSelector"]["matchLabels"]
    assert _labels_match(
        peer["podSelector"]["matchLabels"], gateway["spec"]["template"]["metadata"]["labels"]
    )
    assert not _labels_match(
        peer["podSelector"]["matchLabels"], _authz(manifests)["spec"]["template"]["metadata"]["labels"]
    )


def test_the_envoy_gateway_runs_the_committed_config_with_its_certificates(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = rendered["overlays/envoy-gateway"]
    gateway = one(manifests, "Deployment", "egress-gateway")
    container = _container(gateway, "envoy")
    assert container["image"] == "envoyproxy/envoy:v1.39.3"
    assert _cores(container["resources"]["limits"]["cpu"]) == int(_flag(container["args"], "--concurrency"))
    files = mounted_files(manifests, gateway, "envoy")
    rendered_config = files[_flag(container["args"], "-c")]
    assert rendered_config == (ROOT / "envoy" / "gateway-kubernetes.yaml").read_text()
    assert files["/etc/egress-gateway/trust/ca.pem"] == "secret egress-gateway-trust ca.pem"
    assert files["/etc/egress-gateway/tls/tls.crt"] == "secret egress-gateway-tls tls.crt"
    assert files["/etc/egress-gateway/tls/tls.key"] == "secret egress-gateway-tls tls.key"
    assert files["/etc/egress-gateway/svid/tls.crt"] == "secret egress-gateway-svid tls.crt"
    assert files["/etc/egress-gateway/svid/tls.key"] == "secret egress-gateway-svid tls.key"
    mentioned = set(re.findall(r"filename: (/etc/egress-gateway/\S+)", rendered_config))
    assert mentioned == {
        "/etc/egress-gateway/trust/ca.pem",
        "/etc/egress-gateway/tls/tls.crt",
        "/etc/egress-gateway/tls/tls.key",
        "/etc/egress-gateway/svid/tls.crt",
        "/etc/egress-gateway/svid/tls.key",
    }
    listening = {
        int(port) for port in re.findall(r"address: 0\.0\.0\.0\n\s+portValue: (\d+)", rendered_config)
    }
    assert listening == {port["containerPort"] for port in container["ports"]}
    service = one(manifests, "Service", "egress-gateway")
    assert {port["port"] for port in service["spec"]["ports"]} == listening


def test_the_envoy_overlay_tells_authz_the_gateways_name_and_balances_per_check(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = rendered["overlays/envoy-gateway"]
    gateway = one(manifests, "Service", "egress-gateway")
    args = _container(_authz(manifests), "authz")["args"]
    assert (
        _flag(args, "--gateway-name")
        == f"{gateway['metadata']['name']}.{gateway['metadata']['namespace']}.svc.cluster.local"
    )
    assert _flag(args, "--sni-port") == "443"  # the SNI listener is 10443
    assert one(manifests, "Service", "egress-authz")["spec"]["clusterIP"] == "None"
    assert (
        "clusterIP" not in one(rendered["overlays/istio-egress-gateway"], "Service", "egress-authz")["spec"]
    )


def test_the_image_is_overridable_with_kustomize_images(tmp_path: Path) -> None:
    base = os.path.relpath(KUBERNETES / "base", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{base}]\nimages:\n  - name: ghcr.io/example/egress-authz\n    newName: registry.example.org/egress-authz\n    newTag: 9.9.9\n"
    )
    container = _container(_authz(render(tmp_path)), "authz")
    assert container["image"] == "registry.example.org/egress-authz:9.9.9"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_state_store_comes_from_a_value_the_user_sets(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    manifests = rendered[overlay]
    deployment = _authz(manifests)
    assert _flag(_container(deployment, "authz")["args"], "--state-store") == "$(AUTHZ_STATE_STORE)"
    assert _flag(expanded_args(manifests, deployment, "authz"), "--state-store") == ""  # none until set
    env = {v["name"]: v["valueFrom"] for v in _container(deployment, "authz")["env"] if "valueFrom" in v}
    password = env["AUTHZ_STATE_STORE_PASSWORD"]["secretKeyRef"]
    assert (password["name"], password["key"], password["optional"]) == (
        "egress-authz-state-store",
        "password",
        True,
    )


def test_an_overlay_sets_the_state_store_url(tmp_path: Path) -> None:
    """The overlay's literal, edited as its comment says, is what authz gets (in a copy of the tree)."""
    for tree in ("deploy", "envoy", "policies"):
        shutil.copytree(ROOT / tree, tmp_path / tree)
    overlay = tmp_path / "deploy/kubernetes/overlays/envoy-gateway"
    kustomization = overlay / "kustomization.yaml"
    url = "redis://redis.egress-authz.svc.cluster.local:6379/0"
    text = kustomization.read_text()
    assert text.count("      - url=\n") == 1
    kustomization.write_text(text.replace("      - url=\n", f"      - url={url}\n"))
    manifests = render(overlay)
    assert _flag(expanded_args(manifests, _authz(manifests), "authz"), "--state-store") == url
