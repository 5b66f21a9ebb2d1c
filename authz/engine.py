"""The decision engine: a pure function of (compiled policy, request).

Precedence, first that applies:
NO_IDENTITY, INVALID_IDENTITY, INVALID_DESTINATION, SNI_HOST_MISMATCH,
METADATA_ENDPOINT (unless the identity's policy names the exact destination),
UNKNOWN_IDENTITY, ZONE_NOT_ALLOWED, then the identity's rules:
ALLOWED_BY_RULE or NO_MATCHING_RULE. A policy in dry-run mode turns each of
its denies into an allow with reason DRY_RUN.
"""

from __future__ import annotations

from dataclasses import dataclass

from authz.compiled import CompiledPolicy, ServicePolicy
from authz.decision import Decision, Mode, Reason, Verdict
from authz.destination import DEFAULT_PORTS, InvalidHost, format_destination, normalize_host
from authz.identity import InvalidSpiffeId
from authz.metadata_endpoints import METADATA_ENDPOINTS
from authz.request import EgressRequest
from authz.rule import Rule

__all__ = ["Explanation", "evaluate", "explain"]


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    steps: tuple[str, ...]


def evaluate(policy: CompiledPolicy, request: EgressRequest) -> Decision:
    return _Evaluation(policy, request, None).run()


def explain(policy: CompiledPolicy, request: EgressRequest) -> Explanation:
    """The same decision as evaluate, with each step that led to it."""
    steps: list[str] = []
    decision = _Evaluation(policy, request, steps).run()
    return Explanation(decision, tuple(steps))


class _Evaluation:
    """One request's walk down the precedence list; ``steps`` records it for explain."""

    __slots__ = ("policy", "port", "request", "service", "steps")

    def __init__(self, policy: CompiledPolicy, request: EgressRequest, steps: list[str] | None) -> None:
        self.policy = policy
        self.request = request
        self.steps = steps
        self.service: ServicePolicy | None = None
        port = request.port
        if port is None and request.scheme is not None:
            port = DEFAULT_PORTS.get(request.scheme.lower())
        self.port = port

    def run(self) -> Decision:
        request, port = self.request, self.port
        identity = request.identity
        raw_host = request.host if request.host is not None else request.sni
        if not identity:
            return self.deny(Reason.NO_IDENTITY, "the request carries no workload identity", raw_host)
        try:
            service = self.service = self.policy.service_for(identity)
        except InvalidSpiffeId as exc:
            return self.deny(
                Reason.INVALID_IDENTITY, f"identity {identity!r} is not a valid SPIFFE ID: {exc}", raw_host
            )
        if self.steps is not None:
            self.steps.append(
                f"identity {identity} is governed by policy {service.name}"
                if service is not None
                else f"identity {identity} is named by no policy"
            )

        if raw_host is None:
            return self.deny(Reason.INVALID_DESTINATION, "the request names no destination host or SNI", None)
        try:
            host = normalize_host(raw_host)
            sni = normalize_host(request.sni) if request.sni is not None else None
        except InvalidHost as exc:
            return self.deny(Reason.INVALID_DESTINATION, f"destination is not a valid host: {exc}", raw_host)
        if sni is not None and sni != host:
            return self.deny(
                Reason.SNI_HOST_MISMATCH,
                f"TLS SNI {sni} disagrees with HTTP host {host} (domain fronting)",
                host,
            )

        if host in METADATA_ENDPOINTS:
            rule = self.first_admitting(service.exact.get(host, ()) if service is not None else ())
            if rule is None:
                return self.deny(
                    Reason.METADATA_ENDPOINT,
                    f"{host} is a cloud metadata endpoint and no rule names it",
                    host,
                )
            return self.allow(host, rule)

        if service is None:
            return self.deny(Reason.UNKNOWN_IDENTITY, f"no policy names identity {identity}", host)
        if service.zones is not None and request.zone not in service.zones:
            return self.deny(
                Reason.ZONE_NOT_ALLOWED,
                f"policy {service.name} applies in zones {', '.join(sorted(service.zones))},"
                f" not in {request.zone or 'an unnamed zone'}",
                host,
            )
        candidates = service.candidates(host)
        if not candidates:
            return self.deny(Reason.NO_MATCHING_RULE, f"no rule of {service.name} names host {host}", host)
        rule = self.first_admitting(candidates)
        if rule is None:
            return self.deny(
                Reason.NO_MATCHING_RULE,
                f"no rule of {service.name} admits {format_destination(host, port)}",
                host,
            )
        return self.allow(host, rule)

    def first_admitting(self, rules: tuple[Rule, ...]) -> Rule | None:
        request = self.request
        for rule in rules:
            why_not = rule.why_not(self.port, request.method, request.path)
            if why_not is None:
                return rule
            if self.steps is not None:
                self.steps.append(f"rule {rule.id}: host matches, but {why_not}")
        return None

    def allow(self, host: str, rule: Rule) -> Decision:
        detail = f"rule {rule.id} of {rule.policy} admits {format_destination(host, self.port)}"
        return self.decide(Verdict.ALLOW, Reason.ALLOWED_BY_RULE, detail, host, rule)

    def deny(self, reason: Reason, detail: str, host: str | None) -> Decision:
        return self.decide(Verdict.DENY, reason, detail, host, None)

    def decide(
        self, verdict: Verdict, reason: Reason, detail: str, host: str | None, rule: Rule | None
    ) -> Decision:
        if self.steps is not None:
            self.steps.append(detail)
        service, request = self.service, self.request
        if service is None:
            return Decision(
                verdict=verdict,
                would_verdict=verdict,
                reason=reason,
                mode=Mode.ENFORCE,
                identity=request.identity,
                host=host,
                port=self.port,
                policy_version=self.policy.version,
                detail=detail,
            )
        dry_run = service.mode is Mode.DRY_RUN and verdict is Verdict.DENY
        return Decision(
            verdict=Verdict.ALLOW if dry_run else verdict,
            would_verdict=verdict,
            reason=Reason.DRY_RUN if dry_run else reason,
            mode=service.mode,
            identity=request.identity,
            host=host,
            port=self.port,
            policy_version=self.policy.version,
            policy=service.name,
            rule=rule.id if rule is not None else None,
            owner=service.owner,
            change_ref=service.change_ref,
            dry_run_reason=reason if dry_run else None,
            detail=detail,
        )
