"""Warnings for what is legal but deserves a reviewer's second look: broad
grants must be on purpose and visible in review."""

from __future__ import annotations

import time
from collections.abc import Iterator

from authz.core.identity import SpiffeId
from authz.core.metadata_endpoints import METADATA_ENDPOINTS
from authz.policy.errors import Problem
from authz.policy.load import Loaded, PolicySet
from authz.policy.model import EgressPolicy

__all__ = ["WIDE_PORT_RANGE", "lint"]

WIDE_PORT_RANGE = 1024

_Warning = tuple[tuple[str | int, ...], str]


def lint(policy_set: PolicySet, now: float | None = None) -> list[Problem]:
    """Warnings; ``now`` (default the clock) judges exceptions' expiry."""
    instant = time.time() if now is None else now
    return [
        loaded.source.problem(loc, message, "warning")
        for loaded in policy_set.policies
        for loc, message in _policy_warnings(loaded, policy_set, instant)
    ]


def _policy_warnings(loaded: Loaded[EgressPolicy], policy_set: PolicySet, now: float) -> Iterator[_Warning]:
    policy = loaded.model
    name = policy.metadata.name
    if policy.metadata.change_ref is None:
        yield ("metadata",), f"policy {name} has no change_ref: decisions cannot be traced to a change"
    if policy.spec.mode == "dry-run":
        yield ("spec", "mode"), f"policy {name} is in dry-run: its denies are logged, not enforced"
    if policy.spec.allow_sni_host_mismatch:
        yield (
            ("spec", "allow_sni_host_mismatch"),
            f"policy {name} lets a TLS SNI disagree with the HTTP host: domain fronting is not refused",
        )
    if not policy.spec.egress:
        yield ("spec", "egress"), f"policy {name} has no rules: its identities are denied everything"
    others = [
        (pattern, other.model.metadata.name)
        for other in policy_set.policies
        if other.model.metadata.name != name
        for pattern in other.model.spec.identities
        if pattern.is_prefix
    ]
    for index, pattern in enumerate(policy.spec.identities):
        loc: tuple[str | int, ...] = ("spec", "identities", index)
        if pattern.is_prefix:
            yield loc, f"identity prefix {pattern} admits every workload below {pattern.key}"
            continue
        exact = SpiffeId(pattern.trust_domain, pattern.path)
        for prefix, owner in others:
            if prefix.covers(exact):
                yield loc, f"{pattern} is also covered by {prefix} of policy {owner}; the exact ID wins"
    for index, rule in enumerate(policy.spec.egress):
        rule_loc = ("spec", "egress", index)
        if rule.purpose is None:
            yield rule_loc, f"rule {rule.id} has no purpose: say why the service needs it"
        for h, host in enumerate(rule.hosts):
            loc = (*rule_loc, "hosts", h)
            if host.kind == "wildcard":
                yield loc, f"wildcard {host} admits every name directly below {host.value}"
            elif host.kind == "network":
                yield loc, f"CIDR {host} admits every address in the block"
            elif host.value in METADATA_ENDPOINTS:
                yield loc, f"{host} is a cloud metadata endpoint (credentials): is this intended?"
        for p, (low, high) in enumerate(rule.ports):
            if high - low + 1 >= WIDE_PORT_RANGE:
                yield (*rule_loc, "ports", p), f"port range {low}-{high} spans {high - low + 1} ports"
    for index, exception in enumerate(policy.spec.exceptions):
        if exception.expires.timestamp() <= now:
            yield (
                ("spec", "exceptions", index, "expires"),
                f"exception {exception.id} expired at {exception.expires.isoformat()}: remove it"
                " (it now denies with EXCEPTION_EXPIRED)",
            )
