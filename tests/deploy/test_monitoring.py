"""deploy/kubernetes/monitoring in the overlays: the PrometheusRule carries
exactly deploy/monitoring's rules, it and the ServiceMonitor
validate against prometheus-operator's CRDs, strictly, and the ServiceMonitor
scrapes every worker's metrics port under the job the rules name."""

import copy
from typing import Any

import pytest
import yaml

from tests.deploy.kubernetes_manifests import OVERLAYS, is_prometheus_operator, needs_kubectl
from tests.deploy.kubernetes_manifests import authz as _authz
from tests.deploy.kubernetes_manifests import container as _container
from tests.deploy.kubernetes_manifests import flag as _flag
from tests.deploy.kubernetes_manifests import labels_match as _labels_match
from tests.deploy.schemas import Manifest, PrometheusOperatorSchemas, by_kind, one
from tests.monitoring.files import JOB, RULES

pytestmark = needs_kubectl
WITH_MONITORING = [overlay for overlay in OVERLAYS if overlay.startswith("overlays/")]


@pytest.mark.parametrize("overlay", WITH_MONITORING)
def test_each_overlay_has_the_rules_and_the_service_monitor_and_they_validate(
    rendered: dict[str, list[Manifest]], prometheus_operator: PrometheusOperatorSchemas, overlay: str
) -> None:
    manifests = rendered[overlay]
    objects = [manifest for manifest in manifests if is_prometheus_operator(manifest)]
    assert sorted((m["kind"], m["metadata"]["name"], m["metadata"]["namespace"]) for m in objects) == [
        ("PrometheusRule", "egress-authz", "egress-authz"),
        ("ServiceMonitor", "egress-authz", "egress-authz"),
    ]
    problems = {
        f"{manifest['kind']}/{manifest['metadata']['name']}": found
        for manifest in objects
        if (found := [str(problem) for problem in prometheus_operator.problems(manifest)])
    }
    assert problems == {}
    rule = one(manifests, "PrometheusRule", "egress-authz")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_the_base_needs_no_prometheus_operator(rendered: dict[str, list[Manifest]]) -> None:
    assert not [manifest for manifest in rendered["base"] if is_prometheus_operator(manifest)]


def test_the_service_monitor_scrapes_every_worker_under_the_rules_job(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = rendered["overlays/envoy-gateway"]
    monitor = one(manifests, "ServiceMonitor", "egress-authz")
    services = [
        service
        for service in by_kind(manifests, "Service")
        if service["metadata"]["namespace"] == monitor["metadata"]["namespace"]
        and _labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"].get("labels", {}))
    ]
    scraped = {
        (service["metadata"]["name"], port["name"], port["port"])
        for service in services
        for port in service["spec"]["ports"]
        if port["name"] in {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
    }
    args = _container(_authz(manifests), "authz")["args"]
    first, workers = int(_flag(args, "--metrics-port")), int(_flag(args, "--workers"))
    assert scraped == {("egress-authz-metrics", f"metrics-{i}", first + i) for i in range(workers)}
    metrics = one(manifests, "Service", "egress-authz-metrics")
    assert metrics["metadata"]["labels"][monitor["spec"]["jobLabel"]] == JOB


@pytest.mark.parametrize(
    ("kind", "change", "said"),
    [
        ("ServiceMonitor", {"endpoints": [{"port": "metrics-0", "intervall": "30s"}]}, "intervall"),
        ("ServiceMonitor", {"jobLabel": 7}, "is not of type 'string'"),
        (
            "PrometheusRule",
            {"groups": [{"name": "g", "rules": [{"alert": "A"}]}]},
            "'expr' is a required property",
        ),
    ],
    ids=["misspelled field", "job label not a string", "rule without an expression"],
)
def test_the_crd_validator_refuses_a_broken_object(
    rendered: dict[str, list[Manifest]],
    prometheus_operator: PrometheusOperatorSchemas,
    kind: str,
    change: dict[str, Any],
    said: str,
) -> None:
    broken = copy.deepcopy(one(rendered["overlays/envoy-gateway"], kind, "egress-authz"))
    broken["spec"].update(change)
    problems = [str(problem) for problem in prometheus_operator.problems(broken)]
    assert any(said in problem for problem in problems), problems
