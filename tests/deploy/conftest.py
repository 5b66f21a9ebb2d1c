"""Shared fixtures of the deployment tests."""

import os

import pytest

from tests.deploy.kubernetes_manifests import KUBERNETES, OVERLAYS
from tests.deploy.schemas import (
    ISTIO_CRDS_DEFAULT,
    ISTIO_CRDS_ENV,
    MIN_KUBERNETES,
    PROMETHEUS_OPERATOR_CRDS,
    PROMETHEUS_OPERATOR_DEFAULT,
    IstioSchemas,
    Manifest,
    PrometheusOperatorSchemas,
    istio_crds_path,
    kubectl,
    kubectl_minor,
    kubernetes_schema_version,
    prometheus_operator_crds,
    render,
)


@pytest.fixture(scope="session")
def istio() -> IstioSchemas:
    """Istio's CRD schemas; the tests that need them skip, saying where to put them, when absent."""
    path = istio_crds_path()
    if path is None:
        looked = os.environ.get(ISTIO_CRDS_ENV) or ISTIO_CRDS_DEFAULT
        pytest.skip(
            f"Istio's CRDs not found at {looked}: point {ISTIO_CRDS_ENV} at istio/api's"
            " customresourcedefinitions.gen.yaml (or put it there)"
        )
    return IstioSchemas.load(path)


@pytest.fixture(scope="session")
def prometheus_operator() -> PrometheusOperatorSchemas:
    """prometheus-operator's CRD schemas (PrometheusRule, ServiceMonitor, PodMonitor)."""
    paths = prometheus_operator_crds()
    if not paths:
        pytest.skip(f"prometheus-operator's CRDs ({', '.join(PROMETHEUS_OPERATOR_CRDS)}) not found in"
                    f" {PROMETHEUS_OPERATOR_DEFAULT} nor tests/data/prometheus-operator")  # fmt: skip
    return PrometheusOperatorSchemas.load(*paths)


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Manifest]]:
    """Each of deploy/kubernetes' kustomizations, rendered by `kubectl kustomize` (needs kubectl:
    the tests that use this are marked ``needs_kubectl``)."""
    return {name: render(KUBERNETES / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def schema_versions() -> list[str]:
    """kubectl's own Kubernetes version, and the oldest one the manifests are for."""
    binary = kubectl()
    assert binary is not None
    return sorted({kubernetes_schema_version(kubectl_minor(binary)), MIN_KUBERNETES})
