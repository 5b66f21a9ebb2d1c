"""The decision engine: a pure function of (compiled policy, request, instant).

Precedence, first that applies:
NO_IDENTITY, INVALID_IDENTITY, REVOKED (unless the revocation's ``allow_only``
admits the destination), INVALID_DESTINATION, SNI_HOST_MISMATCH (unless the
identity's policy allows a mismatch), METADATA_ENDPOINT (unless a rule of
the identity's policy names the exact destination), UNKNOWN_IDENTITY,
ZONE_NOT_ALLOWED, then the identity's rules (ALLOWED_BY_RULE), its
break-glass exceptions (ALLOWED_BY_EXCEPTION until they expire,
EXCEPTION_EXPIRED after), and NO_MATCHING_RULE.

Dry-run (a policy's ``mode``, or the zone-wide mode of the compiled policy)
turns only the allowlist's denials (DRY_RUN_RELAXES) into allows with reason
DRY_RUN; the guards and REVOKED are enforced in every mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from authz.core.compiled import CompiledPolicy, Revocation, ServicePolicy
from authz.core.decision import DRY_RUN_RELAXES, Decision, Mode, Reason, Verdict
from authz.core.destination import DEFAULT_PORTS, InvalidHost, format_destination, normalize_host
from authz.core.identity import InvalidSpiffeId
from authz.core.metadata_endpoints import METADATA_ENDPOINTS
from authz.core.request import EgressRequest
from authz.core.rule import Rule

__all__ = ["Explanation", "evaluate", "explain", "fail_closed"]


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    steps: tuple[str, ...]


# Enum members read once: attribute access on an Enum class costs ~0.25 µs.
_ALLOW, _DENY = Verdict.ALLOW, Verdict.DENY
_ENFORCE, _DRY_RUN = Mode.ENFORCE, Mode.DRY_RUN


def evaluate(policy: CompiledPolicy, request: EgressRequest, now: float | None = None) -> Decision:
    """The decision for ``request``; ``now`` (seconds since the epoch, default
    the clock) is the instant break-glass exceptions are judged at."""
    return _evaluate(policy, request, None, now)


def explain(policy: CompiledPolicy, request: EgressRequest, now: float | None = None) -> Explanation:
    """The same decision as evaluate, with each step that led to it."""
    steps: list[str] = []
    decision = _evaluate(policy, request, steps, now)
    return Explanation(decision, tuple(steps))


def fail_closed(
    reason: Reason, detail: str, policy_version: str, request: EgressRequest | None = None
) -> Decision:
    """A deny for when no evaluation happened or could be trusted (internal
    error, timeout, no policy yet): enforced whatever the policy's mode."""
    if request is None:
        return Decision(_DENY, _DENY, reason, _ENFORCE, None, None, None, policy_version, detail=detail)
    return Decision(
        _DENY, _DENY, reason, _ENFORCE, request.identity, request.named_host, request.port, policy_version,
        detail=detail,
    )  # fmt: skip


def _evaluate(
    policy: CompiledPolicy, request: EgressRequest, steps: list[str] | None, now: float | None
) -> Decision:
    """Walk the precedence list; ``steps``, when given, records the walk for explain."""
    identity, port = request.identity, request.port
    if port is None and request.scheme is not None:
        port = DEFAULT_PORTS.get(request.scheme.lower())
    raw_host = request.named_host
    if not identity:
        return _decide(policy, request, None, _DENY, Reason.NO_IDENTITY, raw_host, port, None,
                       "the request carries no workload identity", steps)  # fmt: skip
    try:
        service = policy.service_for(identity)
        revocation = policy.revocation_for(identity) if policy.revoked or policy.revoked_prefix else None
    except InvalidSpiffeId as exc:
        return _decide(policy, request, None, _DENY, Reason.INVALID_IDENTITY, raw_host, port, None,
                       f"identity {identity!r} is not a valid SPIFFE ID: {exc}", steps)  # fmt: skip
    if steps is not None:
        steps.append(
            f"identity {identity} is governed by policy {service.name}"
            if service is not None
            else f"identity {identity} is named by no policy"
        )
    if revocation is not None and revocation.allow_only is None:
        return _decide(policy, request, service, _DENY, Reason.REVOKED, raw_host, port, None,
                       _revoked(revocation), steps, revocation)  # fmt: skip

    if raw_host is None:
        return _decide(policy, request, service, _DENY, Reason.INVALID_DESTINATION, None, port, None,
                       "the request names no destination host or SNI", steps, revocation)  # fmt: skip
    try:
        # A name that is a key of the policy's own index is canonical already.
        host = (
            raw_host if service is not None and raw_host in service.index.exact else normalize_host(raw_host)
        )
        sni = normalize_host(request.sni) if request.sni is not None and request.sni != raw_host else host
    except InvalidHost as exc:
        return _decide(policy, request, service, _DENY, Reason.INVALID_DESTINATION, raw_host, port, None,
                       f"destination is not a valid host: {exc}", steps, revocation)  # fmt: skip
    if revocation is not None:
        assert revocation.allow_only is not None
        if _first_admitting(revocation.allow_only.candidates(host), port, request, None) is None:
            detail = f"{_revoked(revocation)}; contained: {format_destination(host, port)} is not in its allow_only"
            return _decide(policy, request, service, _DENY, Reason.REVOKED, host, port, None, detail, steps,
                           revocation)  # fmt: skip
        if steps is not None:
            steps.append(
                f"{_revoked(revocation)}; contained: {format_destination(host, port)} is in its allow_only"
            )
    if sni is not None and sni != host and not (service is not None and service.allow_sni_host_mismatch):
        return _decide(policy, request, service, _DENY, Reason.SNI_HOST_MISMATCH, host, port, None,
                       f"TLS SNI {sni} disagrees with HTTP host {host} (domain fronting)", steps, revocation)  # fmt: skip

    if (
        host in METADATA_ENDPOINTS
    ):  # a rule naming it exactly lifts this guard only; zones and rules still apply
        named = service.index.exact.get(host, ()) if service is not None else ()
        if _first_admitting(named, port, request, None) is None:
            return _decide(policy, request, service, _DENY, Reason.METADATA_ENDPOINT, host, port, None,
                           f"{host} is a cloud metadata endpoint and no rule names it", steps, revocation)  # fmt: skip
    if service is None:
        return _decide(policy, request, None, _DENY, Reason.UNKNOWN_IDENTITY, host, port, None,
                       f"no policy names identity {identity}", steps, revocation)  # fmt: skip
    if service.zones is not None and request.zone not in service.zones:
        zones = ", ".join(sorted(service.zones))
        return _decide(policy, request, service, _DENY, Reason.ZONE_NOT_ALLOWED, host, port, None,
                       f"policy {service.name} applies in zones {zones}, not in {request.zone or 'an unnamed zone'}",
                       steps, revocation)  # fmt: skip
    candidates = service.index.candidates(host)
    rule = _first_admitting(candidates, port, request, steps) if candidates else None
    if rule is not None:
        return _decide(policy, request, service, _ALLOW, Reason.ALLOWED_BY_RULE, host, port, rule,
                       f"rule {rule.id} of {rule.policy} admits {format_destination(host, port)}", steps, revocation)  # fmt: skip
    if service.exceptions is not None:
        granted = _first_admitting(service.exceptions.candidates(host), port, request, steps)
        if granted is not None:
            return _exception(policy, request, service, granted, host, port, steps, revocation, now)
    if not candidates:
        return _decide(policy, request, service, _DENY, Reason.NO_MATCHING_RULE, host, port, None,
                       f"no rule of {service.name} names host {host}", steps, revocation)  # fmt: skip
    return _decide(policy, request, service, _DENY, Reason.NO_MATCHING_RULE, host, port, None,
                   f"no rule of {service.name} admits {format_destination(host, port)}", steps, revocation)  # fmt: skip


def _exception(
    policy: CompiledPolicy,
    request: EgressRequest,
    service: ServicePolicy,
    first: Rule,
    host: str,
    port: int | None,
    steps: list[str] | None,
    revocation: Revocation | None,
    now: float | None,
) -> Decision:
    """ALLOWED_BY_EXCEPTION by the first admitting exception still open at
    ``now``; EXCEPTION_EXPIRED when every one that admits the request has expired."""
    instant = time.time() if now is None else now
    assert service.exceptions is not None
    admitting = [first] + [
        rule
        for rule in service.exceptions.candidates(host)
        if rule is not first and rule.why_not(port, request.method, request.path) is None
    ]
    destination = format_destination(host, port)
    for rule in admitting:
        assert rule.expires is not None
        if instant < rule.expires:
            detail = f"exception {rule.id} of {rule.policy} (owner {rule.owner}, ticket {rule.ticket}) admits {destination} until {_utc(rule.expires)}"
            return _decide(policy, request, service, _ALLOW, Reason.ALLOWED_BY_EXCEPTION, host, port, rule,
                           detail, steps, revocation)  # fmt: skip
    expired = admitting[0]
    assert expired.expires is not None
    detail = f"exception {expired.id} of {expired.policy} admitted {destination} until {_utc(expired.expires)}; it has expired (ticket {expired.ticket})"
    return _decide(policy, request, service, _DENY, Reason.EXCEPTION_EXPIRED, host, port, expired,
                   detail, steps, revocation)  # fmt: skip


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _revoked(revocation: Revocation) -> str:
    ticket = f", ticket {revocation.ticket}" if revocation.ticket else ""
    return f"identity revoked by {revocation.by} ({revocation.pattern}: {revocation.reason}{ticket})"


def _first_admitting(
    rules: tuple[Rule, ...], port: int | None, request: EgressRequest, steps: list[str] | None
) -> Rule | None:
    for rule in rules:
        why_not = rule.why_not(port, request.method, request.path)
        if why_not is None:
            return rule
        if steps is not None:
            kind = "exception" if rule.expires is not None else "rule"
            steps.append(f"{kind} {rule.id}: host matches, but {why_not}")
    return None


def _decide(
    policy: CompiledPolicy,
    request: EgressRequest,
    service: ServicePolicy | None,
    verdict: Verdict,
    reason: Reason,
    host: str | None,
    port: int | None,
    rule: Rule | None,
    detail: str,
    steps: list[str] | None,
    revocation: Revocation | None = None,
) -> Decision:
    """The Decision; dry-run (the policy's or the zone's) relaxes only DRY_RUN_RELAXES.
    ``rule`` is the rule that allowed, or the exception that allowed or expired."""
    if steps is not None:
        steps.append(detail)
    mode = _DRY_RUN if policy.mode is _DRY_RUN else (service.mode if service is not None else _ENFORCE)
    pattern = revocation.pattern if revocation is not None else None
    exception = exception_owner = ticket = rule_id = None
    if rule is not None:
        if rule.expires is not None:
            exception, exception_owner, ticket = rule.id, rule.owner, rule.ticket
        elif verdict is _ALLOW:
            rule_id = rule.id
    elif revocation is not None and reason is Reason.REVOKED:
        ticket = revocation.ticket
    if service is None:
        if mode is _DRY_RUN and verdict is _DENY and reason in DRY_RUN_RELAXES:
            return Decision(_ALLOW, _DENY, Reason.DRY_RUN, mode, request.identity, host, port, policy.version,
                            None, None, None, None, reason, None, None, ticket, pattern, detail)  # fmt: skip
        return Decision(verdict, verdict, reason, mode, request.identity, host, port, policy.version,
                        None, None, None, None, None, None, None, ticket, pattern, detail)  # fmt: skip
    if mode is _DRY_RUN and verdict is _DENY and reason in DRY_RUN_RELAXES:
        return Decision(_ALLOW, _DENY, Reason.DRY_RUN, mode, request.identity, host, port, policy.version,
                        service.name, None, service.owner, service.change_ref, reason, exception, exception_owner,
                        ticket, pattern, detail)  # fmt: skip
    return Decision(verdict, verdict, reason, mode, request.identity, host, port, policy.version, service.name,
                    rule_id, service.owner, service.change_ref, None, exception, exception_owner, ticket, pattern,
                    detail)  # fmt: skip
