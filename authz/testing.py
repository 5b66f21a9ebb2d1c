"""Helpers for testing code and policies against the engine without files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from authz.compiled import CompiledPolicy
from authz.policy.compile import compile_policies, gc_paused
from authz.policy.load import Loaded, PolicySet, Source
from authz.policy.model import API_VERSION, EgressPolicy

__all__ = ["compile_documents", "policy_document", "validate_documents"]


def policy_document(
    name: str,
    identities: Sequence[str],
    egress: Sequence[Mapping[str, Any]],
    *,
    owner: str = "team-test",
    change_ref: str | None = "CHG-0",
    **spec: Any,
) -> dict[str, Any]:
    """An EgressPolicy document as a mapping, as YAML would give it."""
    metadata: dict[str, Any] = {"name": name, "owner": owner}
    if change_ref is not None:
        metadata["change_ref"] = change_ref
    return {
        "apiVersion": API_VERSION,
        "kind": "EgressPolicy",
        "metadata": metadata,
        "spec": {"identities": list(identities), "egress": [dict(rule) for rule in egress], **spec},
    }


def validate_documents(*documents: Mapping[str, Any], version: str = "sha256:test") -> PolicySet:
    """Policy documents as loading files would give them (without file names
    and lines); raises pydantic's ValidationError."""
    with gc_paused():
        models = [EgressPolicy.model_validate(document) for document in documents]
    return PolicySet(tuple(Loaded(model, Source("<memory>", {})) for model in models), (), version)


def compile_documents(*documents: Mapping[str, Any], version: str = "sha256:test") -> CompiledPolicy:
    """validate_documents, then compile; raises PolicyError on conflicts."""
    return compile_policies(validate_documents(*documents, version=version))
