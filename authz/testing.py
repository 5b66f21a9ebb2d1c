"""Helpers for testing code and policies against the engine without files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from authz.core.compiled import CompiledPolicy
from authz.core.destination import DEFAULT_PORTS, format_destination
from authz.core.request import EgressRequest
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest
from authz.policy.compile import CompileOptions, compile_policies, gc_paused
from authz.policy.load import Loaded, PolicySet, Source
from authz.policy.model import API_VERSION, EgressPolicy, EgressRevocation

__all__ = [
    "check_request",
    "compile_documents",
    "policy_document",
    "revocation_document",
    "validate_documents",
]


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


def revocation_document(name: str, revoked: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """An EgressRevocation document; each entry needs identity, reason, by and at."""
    return {
        "apiVersion": API_VERSION,
        "kind": "EgressRevocation",
        "metadata": {"name": name},
        "spec": {"revoked": [dict(entry) for entry in revoked]},
    }


def validate_documents(*documents: Mapping[str, Any], version: str = "sha256:test") -> PolicySet:
    """Policy and revocation documents as loading files would give them
    (without file names and lines); raises pydantic's ValidationError."""
    source = Source("<memory>", {})
    with gc_paused():
        policies = [
            Loaded(EgressPolicy.model_validate(d), source)
            for d in documents
            if d.get("kind") == "EgressPolicy"
        ]
        revocations = [
            Loaded(EgressRevocation.model_validate(d), source)
            for d in documents
            if d.get("kind") == "EgressRevocation"
        ]
    return PolicySet(tuple(policies), (), version, tuple(revocations))


def compile_documents(
    *documents: Mapping[str, Any], version: str = "sha256:test", options: CompileOptions | None = None
) -> CompiledPolicy:
    """validate_documents, then compile (``options``: zone mode, exception
    lifetime, load time); raises PolicyError on conflicts."""
    return compile_policies(validate_documents(*documents, version=version), options or CompileOptions())


def check_request(request: EgressRequest, *, listener_port: int | None = None) -> CheckRequest:
    """The CheckRequest Envoy would send for ``request``: from the HTTP filter
    when it has a method, else from the network (TCP/TLS) filter, which sees
    only the SNI (``host`` stands in for it when there is none).

    The identity goes in ``source.principal``, the port in the authority (HTTP)
    or as the listener's port (TCP, unless ``listener_port`` is given), the
    zone in ``context_extensions``.
    """
    check = CheckRequest()
    attributes = check.attributes
    if request.identity is not None:
        attributes.source.principal = request.identity
    if request.zone is not None:
        attributes.context_extensions["zone"] = request.zone
    port = request.port
    if port is None and request.scheme is not None:
        port = DEFAULT_PORTS.get(request.scheme)
    if request.method is None:
        sni = request.sni if request.sni is not None else request.host
        if sni is not None:
            attributes.tls_session.sni = sni
        listener_port = port if listener_port is None else listener_port
    else:
        if request.sni is not None:
            attributes.tls_session.sni = request.sni
        http = attributes.request.http
        http.method = request.method
        if request.host is not None:
            http.host = _authority(request.host, request.port)
        if request.path is not None:
            http.path = request.path
        if request.scheme is not None:
            http.scheme = request.scheme
    if listener_port is not None:
        attributes.destination.address.socket_address.address = "127.0.0.1"
        attributes.destination.address.socket_address.port_value = listener_port
    return check


def _authority(host: str, port: int | None) -> str:
    if host.startswith("["):
        return host if port is None else f"{host}:{port}"
    return format_destination(host, port)
