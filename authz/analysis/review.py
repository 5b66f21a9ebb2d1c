"""A policy read against the traffic in the decision logs: the rules and
exceptions the traffic used (those it never used are stale allowances to
remove), the identities on one side only, and whether a destination is in
the identity's policy at all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from authz.analysis.logs import DecisionLogs
from authz.analysis.window import iso
from authz.core.compiled import CompiledPolicy
from authz.core.decision import Reason
from authz.core.identity import InvalidSpiffeId, identity_prefixes
from authz.core.rule import Rule
from authz.policy.load import PolicySet
from authz.policy.model import EgressException, EgressRule

__all__ = ["ALLOWED", "KnownByPolicy", "PolicyReview", "RuleUse", "review_policy"]

#: The reasons of a record that a rule or exception allowed.
ALLOWED: frozenset[str] = frozenset({Reason.ALLOWED_BY_RULE, Reason.ALLOWED_BY_EXCEPTION})


@dataclass(frozen=True, slots=True)
class RuleUse:
    """A rule or exception of the policy and the records it allowed in the window."""

    policy: str
    id: str
    kind: Literal["rule", "exception"]
    hosts: tuple[str, ...]
    records: int
    last_used: datetime | None
    file: str
    line: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "id": self.id,
            "kind": self.kind,
            "hosts": list(self.hosts),
            "records": self.records,
            "last_used": iso(self.last_used) if self.last_used is not None else None,
            "file": self.file,
            "line": self.line,
        }


@dataclass(frozen=True, slots=True)
class PolicyReview:
    """The policy read against the traffic: which rules and exceptions it used
    (``rules``: every one, in file order), which identity patterns never
    appeared, and which identities no policy governs (or that are no valid ID)."""

    version: str
    rules: tuple[RuleUse, ...]
    unseen_identities: tuple[tuple[str, str], ...]  # (policy, identity pattern)
    identities_without_policy: tuple[str, ...]

    @property
    def unused_rules(self) -> tuple[RuleUse, ...]:
        return tuple(rule for rule in self.rules if rule.records == 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "rules": [rule.to_dict() for rule in self.rules],
            "unused_rules": [rule.to_dict() for rule in self.unused_rules],
            "unseen_identities": [
                {"policy": policy, "identity": pattern} for policy, pattern in self.unseen_identities
            ],
            "identities_without_policy": list(self.identities_without_policy),
        }


class KnownByPolicy:
    """Is a destination in the identity's policy: a rule, or an exception open
    at ``now``, whose host matches and that admits the port (HTTP constraints
    aside: they narrow a destination, they do not make it known or unknown)."""

    def __init__(self, compiled: CompiledPolicy, now: float) -> None:
        self.compiled = compiled
        self.now = now

    def unknown(self, identity: str | None, host: str | None, port: int | None) -> bool:
        if identity is None or host is None or port is None:
            return True
        try:
            service = self.compiled.service_for(identity)
        except InvalidSpiffeId:
            return True
        if service is None:
            return True
        rules: tuple[Rule, ...] = service.index.candidates(host)
        if service.exceptions is not None:
            rules += tuple(r for r in service.exceptions.candidates(host) if (r.expires or 0) > self.now)
        return not any(_admits_port(rule, port) for rule in rules)


def _admits_port(rule: Rule, port: int) -> bool:
    return port in rule.ports or any(low <= port <= high for low, high in rule.port_ranges)


def review_policy(
    logs: DecisionLogs, seen: Iterable[str], policy_set: PolicySet, compiled: CompiledPolicy
) -> PolicyReview:
    """The review of ``policy_set`` against the ``_flows`` table that
    take_inventory made of ``logs``; ``seen`` are the identities in the window.
    A rule or exception is used when a record in the window names it as what
    allowed it (the ``rule`` or ``exception`` key under its ``policy``'s name)."""
    allowed = ", ".join(f"'{reason}'" for reason in sorted(ALLOWED))
    used = {
        (policy, rule): (int(count), last)
        for policy, rule, count, last in logs.query(
            "SELECT policy, coalesce(rule, exception), sum(n), max(last_seen) FROM _flows "
            f"WHERE in_window AND reason IN ({allowed}) GROUP BY ALL"
        )
    }
    rules: list[RuleUse] = []
    unseen: list[tuple[str, str]] = []
    seen = sorted(seen)
    covered: set[str] = set()
    for identity in seen:
        try:
            covered.update(identity_prefixes(identity))
        except InvalidSpiffeId:
            continue
    exact = set(seen)
    for loaded in policy_set.policies:
        spec, name, source = loaded.model.spec, loaded.model.metadata.name, loaded.source
        entries: list[tuple[Literal["rule", "exception"], int, EgressRule | EgressException]]
        entries = [("rule", index, rule) for index, rule in enumerate(spec.egress)]
        entries += [("exception", index, exception) for index, exception in enumerate(spec.exceptions)]
        for kind, index, entry in entries:
            count, last = used.get((name, entry.id), (0, None))
            loc = ("spec", "egress" if kind == "rule" else "exceptions", index)
            rules.append(
                RuleUse(
                    policy=name,
                    id=entry.id,
                    kind=kind,
                    hosts=tuple(map(str, entry.hosts)),
                    records=count,
                    last_used=last,
                    file=source.file,
                    line=source.line(loc),
                )
            )
        for pattern in spec.identities:
            if not (pattern.key in covered if pattern.is_prefix else pattern.key in exact):
                unseen.append((name, str(pattern)))
    without = []
    for identity in seen:
        try:
            governed = compiled.service_for(identity) is not None
        except InvalidSpiffeId:
            governed = False
        if not governed:
            without.append(identity)
    return PolicyReview(compiled.version, tuple(rules), tuple(unseen), tuple(sorted(without)))
