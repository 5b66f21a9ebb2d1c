"""Checks that need every policy at once: an exact ID that another policy's
prefix also covers, and one destination granted to many identities."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

from authz.core.destination import format_destination
from authz.core.identity import SpiffeId
from authz.policy.lint.codes import Code
from authz.policy.lint.findings import Finding, Loc
from authz.policy.load import Loaded
from authz.policy.model import EgressPolicy

__all__ = ["set_findings"]

_NAMED = 10  # identities named in one SHARED_DESTINATION message


def set_findings(policies: Sequence[Loaded[EgressPolicy]], max_identities: int) -> Iterator[Finding]:
    yield from _prefix_overlaps(policies)
    yield from _shared_destinations(policies, max_identities)


def _prefix_overlaps(policies: Sequence[Loaded[EgressPolicy]]) -> Iterator[Finding]:
    prefixes = [
        (pattern, loaded.model.metadata.name)
        for loaded in policies
        for pattern in loaded.model.spec.identities
        if pattern.is_prefix
    ]
    for loaded in policies:
        name = loaded.model.metadata.name
        for index, pattern in enumerate(loaded.model.spec.identities):
            if pattern.is_prefix:
                continue
            exact = SpiffeId(pattern.trust_domain, pattern.path)
            for prefix, other in prefixes:
                if other != name and prefix.covers(exact):
                    yield Finding(
                        loaded,
                        ("spec", "identities", index),
                        Code.PREFIX_OVERLAP,
                        f"{pattern} is also covered by {prefix} of policy {other}; the exact ID wins",
                    )


def _shared_destinations(policies: Sequence[Loaded[EgressPolicy]], max_identities: int) -> Iterator[Finding]:
    """Rules (not exceptions: they close by themselves) that grant one
    host:port, written the same, to more than ``max_identities`` identity
    patterns: many workloads behind one grant often share one credential."""
    identities: dict[str, dict[str, None]] = defaultdict(dict)  # destination -> identities, in order
    sites: dict[str, dict[tuple[str, Loc], Loaded[EgressPolicy]]] = defaultdict(dict)
    for loaded in policies:
        spec = loaded.model.spec
        name = loaded.model.metadata.name
        names = dict.fromkeys(str(pattern) for pattern in spec.identities)
        for r, rule in enumerate(spec.egress):
            for h, host in enumerate(rule.hosts):
                for low, high in rule.ports:
                    port = format_destination(str(host), low) + (f"-{high}" if high != low else "")
                    identities[port].update(names)
                    sites[port][(name, ("spec", "egress", r, "hosts", h))] = loaded
    for destination, shared in identities.items():
        if len(shared) <= max_identities:
            continue
        owners = ", ".join(dict.fromkeys(name for name, _ in sites[destination]))
        named = ", ".join(list(shared)[:_NAMED]) + (
            f" and {len(shared) - _NAMED} more" if len(shared) > _NAMED else ""
        )
        for (_, loc), loaded in sites[destination].items():
            yield Finding(
                loaded,
                loc,
                Code.SHARED_DESTINATION,
                f"{destination} is allowed for {len(shared)} identities (more than {max_identities}) by"
                f" {owners}: {named}; a shared credential? give each workload its own",
            )
