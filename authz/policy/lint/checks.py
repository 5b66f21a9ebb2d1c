"""The checks of one policy document: what is legal but deserves a
reviewer's second look. Broad grants must be on purpose and visible in
review; placeholders must be filled by a person before they ship."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from authz.core.decision import Mode
from authz.core.destination import HostPattern
from authz.core.metadata_endpoints import METADATA_ENDPOINTS
from authz.policy.compile import exception_too_long
from authz.policy.history import dry_run_since
from authz.policy.lint.codes import Code
from authz.policy.lint.findings import Finding, LintOptions, Loc, RuleUsage, is_placeholder
from authz.policy.load import Loaded
from authz.policy.model import EgressPolicy

__all__ = ["WIDE_PORT_RANGE", "Context", "policy_findings"]

WIDE_PORT_RANGE = 1024
_DAY = 86400.0
Callback = Callable[[Loc, Code, str], Finding]


@dataclass(frozen=True, slots=True)
class Context:
    """The options, the instant judged at, and when each open exception
    entered its policy according to git ((policy, exception id) -> time)."""

    options: LintOptions
    now: float
    exception_added: Mapping[tuple[str, str], datetime]


def policy_findings(loaded: Loaded[EgressPolicy], context: Context) -> Iterator[Finding]:
    """Every finding of one document that needs no other policy."""
    policy = loaded.model
    name = policy.metadata.name

    def at(loc: Loc, code: Code, message: str) -> Finding:
        return Finding(loaded, loc, code, message)

    metadata = policy.metadata
    if is_placeholder(metadata.owner):
        yield at(
            ("metadata", "owner"),
            Code.POLICY_WITHOUT_OWNER,
            f"policy {name} has no owner ({metadata.owner!r}): name the team that answers for its traffic",
        )
    if is_placeholder(metadata.change_ref):
        loc: Loc = ("metadata", "change_ref") if metadata.change_ref is not None else ("metadata",)
        yield at(
            loc,
            Code.POLICY_WITHOUT_CHANGE_REF,
            f"policy {name} has no change_ref: decisions cannot be traced to a change",
        )
    if policy.spec.mode == Mode.DRY_RUN:
        yield from _dry_run_age(loaded, context, at)
    if policy.spec.allow_sni_host_mismatch:
        yield at(
            ("spec", "allow_sni_host_mismatch"),
            Code.SNI_HOST_MISMATCH_ALLOWED,
            f"policy {name} lets a TLS SNI disagree with the HTTP host: domain fronting is not refused",
        )
    if not policy.spec.egress:
        yield at(
            ("spec", "egress"),
            Code.POLICY_WITHOUT_RULES,
            f"policy {name} has no rules: its identities are denied everything",
        )
    for index, pattern in enumerate(policy.spec.identities):
        if pattern.is_prefix:
            width = "namespace" if len(pattern.path) >= 2 else "trust domain"
            yield at(
                ("spec", "identities", index),
                Code.IDENTITY_PREFIX,
                f"identity prefix {pattern} admits every workload below {pattern.key}: one stolen credential"
                f" of the {width} reaches all its destinations through the shared zone gateway",
            )
    usage = context.options.usage
    for index, rule in enumerate(policy.spec.egress):
        rule_loc: Loc = ("spec", "egress", index)
        if is_placeholder(rule.purpose):
            yield at(
                rule_loc if rule.purpose is None else (*rule_loc, "purpose"),
                Code.RULE_WITHOUT_PURPOSE,
                f"rule {rule.id} has no purpose: say why the service needs it",
            )
        yield from _destinations(at, rule_loc, rule.hosts, rule.ports)
        if usage is not None and (name, rule.id) not in usage.used:
            yield at(rule_loc, Code.UNUSED_RULE, f"rule {rule.id} {_unused(usage)}")
    for index, exception in enumerate(policy.spec.exceptions):
        exception_loc: Loc = ("spec", "exceptions", index)
        if is_placeholder(exception.ticket):
            yield at(
                (*exception_loc, "ticket"),
                Code.EXCEPTION_WITHOUT_TICKET,
                f"exception {exception.id} has no ticket ({exception.ticket!r}): link the incident or request",
            )
        yield from _destinations(at, exception_loc, exception.hosts, exception.ports)
        expires = exception.expires
        if expires.timestamp() <= context.now:
            yield at(
                (*exception_loc, "expires"),
                Code.EXCEPTION_EXPIRED,
                f"exception {exception.id} expired at {expires.isoformat()}: remove it"
                " (it now denies with EXCEPTION_EXPIRED)",
            )
        added = context.exception_added.get((name, exception.id))
        max_days = context.options.max_exception_days
        if added is not None and exception_too_long(exception, added.timestamp(), max_days):
            yield at(
                (*exception_loc, "expires"),
                Code.EXCEPTION_TOO_LONG,
                f"exception {exception.id} entered the policy on {_day(added)} (git) and expires {_day(expires)}:"
                f" open {(expires - added).total_seconds() / _DAY:.0f} days, beyond the maximum lifetime of"
                f" {max_days:g} days (renewing an exception does not close it: fix the cause, or make it a rule)",
            )
        if usage is not None and (name, exception.id) not in usage.used:
            yield at(exception_loc, Code.UNUSED_RULE, f"exception {exception.id} {_unused(usage)}")


def _dry_run_age(loaded: Loaded[EgressPolicy], context: Context, at: Callback) -> Iterator[Finding]:
    """How long the policy has been in dry-run: from ``metadata.since``, or
    from the commit that last put it there; unknown (no finding) otherwise."""
    name = loaded.model.metadata.name
    since = loaded.model.metadata.since
    source = "metadata.since"
    history = context.options.history
    if since is None and history is not None:
        since, source = dry_run_since(history, name), "git"
    if since is None:
        return
    days = (context.now - since.timestamp()) / _DAY
    max_days = context.options.max_dry_run_days
    if days > max_days:
        yield at(
            ("spec", "mode"),
            Code.DRY_RUN_TOO_OLD,
            f"policy {name} has been in dry-run for {int(days)} days (since {_day(since)}, from {source}),"
            f" longer than {max_days:g}: enforce it, or fix what it would deny",
        )


def _destinations(
    at: Callback, owner: Loc, hosts: Sequence[HostPattern], ports: Sequence[tuple[int, int]]
) -> Iterator[Finding]:
    for h, host in enumerate(hosts):
        loc = (*owner, "hosts", h)
        if host.kind == "wildcard":
            yield at(
                loc,
                Code.WILDCARD_DESTINATION,
                f"wildcard {host} admits every name directly below {host.value}",
            )
        elif host.kind == "network":
            yield at(loc, Code.CIDR_DESTINATION, f"CIDR {host} admits every address in the block")
        elif host.value in METADATA_ENDPOINTS:
            yield at(
                loc,
                Code.METADATA_ENDPOINT_RULE,
                f"{host} is a cloud metadata endpoint (the node's credentials): is this intended?",
            )
    for p, (low, high) in enumerate(ports):
        if high - low + 1 >= WIDE_PORT_RANGE:
            yield at(
                (*owner, "ports", p),
                Code.WIDE_PORT_RANGE,
                f"port range {low}-{high} spans {high - low + 1} ports",
            )


def _unused(usage: RuleUsage) -> str:
    return (
        f"was named by no decision from {_utc(usage.start)} to {_utc(usage.end)} (the log's last"
        f" {(usage.end - usage.start).total_seconds() / _DAY:g} days): remove it, or say why it stays"
    )


def _utc(moment: datetime) -> str:
    """RFC 3339 in UTC; a naive time is UTC already (as the decision log's ``ts``)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")
