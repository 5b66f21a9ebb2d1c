"""Draft policies from observed traffic (``authz inventory --propose DIR``):
one EgressPolicy an identity, allowing exactly the destinations (host and
port) it was seen to reach, for a person to review, complete and enforce.

- Only what was allowed, or denied by the allowlist alone (PROPOSABLE), is
  proposed. A destination that only a guard denied (METADATA_ENDPOINT,
  SNI_HOST_MISMATCH, INVALID_*, REVOKED) or the server (NO_POLICY,
  INTERNAL_ERROR, TIMEOUT) is left out, and the draft's header says so.
- Exact hosts, one rule a host with the ports seen. A wildcard ``*.parent``
  only where at least ``wildcard_min_hosts`` sibling hosts under one parent
  were seen, marked REVIEW; never over a public suffix (``*.co.uk``,
  ``*.github.io``, ``*.s3.eu-west-1.amazonaws.com``: anyone can own a name
  there), nor for a cloud metadata endpoint.
- HTTP methods and paths are listed above each rule, not made constraints: a
  week of traffic rarely shows every path a service needs, a path rule
  that misses one breaks it in production, and a connection through the SNI
  listener (no method, no path) never matches a rule with HTTP constraints.
- ``owner``, ``change_ref`` and every rule's ``purpose`` are ``TODO``: a
  person fills them, and review lints fail until then.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from publicsuffixlist import PublicSuffixList

from authz import __version__
from authz.analysis.inventory import PROPOSABLE, Destination, IdentityFlows, Inventory
from authz.analysis.inventory_report import counted
from authz.analysis.window import iso
from authz.core.decision import DRY_RUN_RELAXES, Reason
from authz.core.destination import InvalidHost, parse_host_pattern
from authz.core.identity import InvalidSpiffeId, parse_spiffe_id
from authz.core.metadata_endpoints import METADATA_ENDPOINTS
from authz.policy.model import EgressPolicy
from authz.policy.yaml_source import YamlError, read_documents

__all__ = ["WILDCARD_MIN_HOSTS", "Draft", "ProposeError", "ProposedRule", "propose", "write_drafts"]

#: Sibling hosts under one parent it takes to propose ``*.parent`` instead.
WILDCARD_MIN_HOSTS = 5
TODO = "TODO"
_LISTED_FILES = 10  # files named in a header; the rest are counted
_NOT_NAME = re.compile(r"[^a-z0-9]+")


class ProposeError(Exception):
    """The drafts cannot be written (a file exists, the directory is not one)."""


@dataclass(frozen=True, slots=True)
class ProposedRule:
    """One rule of a draft: an exact host, or a wildcard standing for ``siblings``."""

    id: str
    host: str
    ports: tuple[int, ...]
    records: int
    siblings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # comment lines above the rule


@dataclass(frozen=True, slots=True)
class Draft:
    """A draft policy for ``identity``: written as ``file_name``, text ``text``."""

    identity: str
    name: str
    rules: tuple[ProposedRule, ...]
    left_out: tuple[str, ...]  # destinations not proposed, each with why
    allow_sni_host_mismatch: bool
    text: str

    @property
    def file_name(self) -> str:
        return f"{self.name}.yaml"


def propose(
    inventory: Inventory,
    *,
    wildcard_min_hosts: int = WILDCARD_MIN_HOSTS,
    generated_at: datetime | None = None,
) -> tuple[list[Draft], list[str]]:
    """The drafts, one an identity seen with a valid SPIFFE ID, and the
    identities left without one (no identity, an invalid one), each with why."""
    drafts: list[Draft] = []
    skipped: list[str] = []
    names: set[str] = set()
    moment = generated_at or datetime.now(UTC)
    for flows in inventory.identities:
        if flows.identity is None:
            skipped.append(f"{counted(flows.records, 'record')} without an identity: no policy can name them")
            continue
        try:
            spiffe = parse_spiffe_id(flows.identity)
        except InvalidSpiffeId as exc:
            skipped.append(f"{flows.identity!r} is not a valid SPIFFE ID ({exc})")
            continue
        name = _unique(
            names, [spiffe.path[-1] if spiffe.path else spiffe.trust_domain, "-".join(spiffe.path)]
        )
        drafts.append(_draft(inventory, flows, name, wildcard_min_hosts, moment))
    return drafts, skipped


def write_drafts(drafts: list[Draft], directory: Path, *, force: bool = False) -> list[Path]:
    """Write every draft into ``directory`` (made if missing); nothing at all
    when one would overwrite a file and ``force`` is not set. Each draft is
    read back through the policy schema first: a draft that would not load
    is a bug, and is never written."""
    if directory.exists() and not directory.is_dir():
        raise ProposeError(f"{directory} is not a directory")
    paths = [directory / draft.file_name for draft in drafts]
    existing = [str(path) for path in paths if path.exists()]
    if existing and not force:
        raise ProposeError(f"would overwrite {', '.join(existing)}: pass --force to replace them")
    for draft in drafts:
        _check_loads(draft)
    directory.mkdir(parents=True, exist_ok=True)
    for draft, path in zip(drafts, paths, strict=True):
        path.write_text(draft.text, encoding="utf-8")
    return paths


def _draft(inventory: Inventory, flows: IdentityFlows, name: str, minimum: int, moment: datetime) -> Draft:
    assert flows.identity is not None
    proposed: list[Destination] = []
    left_out: list[str] = []
    for destination in flows.destinations:
        why = _why_not(destination)
        if why is None:
            proposed.append(destination)
        else:
            left_out.append(f"{destination.destination}: {why}")
    rules = _rules(proposed, minimum)
    mismatch = sum(destination.sni_mismatch for destination in proposed)
    text = _render(inventory, flows, name, rules, left_out, mismatch, proposed, moment)
    return Draft(flows.identity, name, tuple(rules), tuple(left_out), mismatch > 0, text)


def _why_not(destination: Destination) -> str | None:
    """Why a destination is not proposed, or None when it is."""
    if not destination.proposable:
        return ", ".join(f"{reason} {count:,}" for reason, count in destination.reasons.items())
    if destination.host is None or destination.port is None:
        return "no host or port in its records"
    try:
        pattern = parse_host_pattern(destination.host)
    except InvalidHost as exc:
        return f"not a host a policy can name ({exc})"
    if pattern.kind != "exact" or pattern.value != destination.host:
        return "not a host in canonical form"
    return None


def _rules(proposed: list[Destination], minimum: int) -> list[ProposedRule]:
    """One rule a host (its ports together), or a wildcard for many siblings."""
    by_host: dict[str, list[Destination]] = {}
    for destination in proposed:
        assert destination.host is not None
        by_host.setdefault(destination.host, []).append(destination)
    by_parent: dict[str, list[str]] = {}
    for host in by_host:
        parent = host.partition(".")[2]
        if "." in parent and not _is_ip(host) and host not in METADATA_ENDPOINTS:
            by_parent.setdefault(parent, []).append(host)
    rules: list[ProposedRule] = []
    ids: set[str] = set()
    folded: set[str] = set()
    public_notes: dict[str, str] = {}
    for parent, hosts in sorted(by_parent.items()):
        if len(hosts) < minimum:
            continue
        if _public_suffixes().is_public(parent):
            note = f"not folded into *.{parent}: a public suffix, where anyone can own a name"
            public_notes.update(dict.fromkeys(hosts, note))
            continue
        siblings = tuple(sorted(hosts))
        folded.update(siblings)
        group = [d for host in siblings for d in by_host[host]]
        wildcard_notes = (
            f"REVIEW: a wildcard: {len(siblings)} sibling hosts under {parent} were seen"
            f" (at least {minimum} make a wildcard); it admits every name directly under {parent}:",
            "  " + ", ".join(siblings),
            _seen(group),
            *_denied_now(group),
        )
        rule_id = _unique(ids, [f"wildcard-{parent}"])
        records = sum(d.records for d in group)
        rules.append(ProposedRule(rule_id, f"*.{parent}", _ports(group), records, siblings, wildcard_notes))
    for host, group in by_host.items():
        if host in folded:
            continue
        notes = [_seen(group), *_denied_now(group)]
        if host in public_notes:
            notes.append(public_notes[host])
        if host in METADATA_ENDPOINTS:
            notes.append("REVIEW: a cloud metadata endpoint (instance credentials): is this intended?")
        guarded = _reasons(group, lambda reason: reason not in PROPOSABLE)
        if guarded:
            notes.append(f"also denied by a guard: {guarded}")
        records = sum(d.records for d in group)
        rules.append(ProposedRule(_unique(ids, [host]), host, _ports(group), records, notes=tuple(notes)))
    return sorted(rules, key=lambda rule: (-rule.records, rule.id))


def _reasons(group: list[Destination], which: Callable[[str], bool]) -> str:
    """The records of ``group`` by reason, for the reasons ``which`` picks."""
    counts: dict[str, int] = {}
    for destination in group:
        for reason, count in destination.reasons.items():
            if which(reason):
                counts[reason] = counts.get(reason, 0) + count
    return ", ".join(f"{reason} {count:,}" for reason, count in sorted(counts.items(), key=_busiest))


def _denied_now(group: list[Destination]) -> list[str]:
    """Notes on records the policy in force did not allow: denied by its
    allowlist (a REVIEW: is this traffic wanted?) or allowed by dry-run only."""
    notes = []
    denied = _reasons(group, lambda reason: reason in DRY_RUN_RELAXES and reason != Reason.UNKNOWN_IDENTITY)
    if denied:
        notes.append(f"REVIEW: the policy in force denied these ({denied}): is this traffic wanted?")
    dry_run = sum(destination.reasons.get(Reason.DRY_RUN, 0) for destination in group)
    if dry_run:
        notes.append(f"{dry_run:,} allowed by dry-run only: the policy in force would deny them")
    return notes


def _seen(group: list[Destination]) -> str:
    """What the traffic to these destinations looked like, for the reviewer."""
    first = min(destination.first_seen for destination in group)
    last = max(destination.last_seen for destination in group)
    parts = [f"{counted(sum(d.records for d in group), 'record')} from {iso(first)} to {iso(last)}"]
    methods: dict[str, int] = {}
    paths: dict[str, int] = {}
    for destination in group:
        for method, count in destination.methods.items():
            methods[method] = methods.get(method, 0) + count
        for path, count in destination.paths.items():
            paths[path] = paths.get(path, 0) + count
    if methods:
        parts.append("HTTP " + ", ".join(f"{m} {n:,}" for m, n in sorted(methods.items(), key=_busiest)))
    if paths:
        busiest = sorted(paths.items(), key=_busiest)[:5]
        parts.append("paths " + ", ".join(f"{p} {n:,}" for p, n in busiest))
    return "; ".join(parts)


def _busiest(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


def _ports(group: list[Destination]) -> tuple[int, ...]:
    return tuple(sorted({destination.port for destination in group if destination.port is not None}))


def _render(
    inventory: Inventory,
    flows: IdentityFlows,
    name: str,
    rules: list[ProposedRule],
    left_out: list[str],
    mismatch: int,
    proposed: list[Destination],
    moment: datetime,
) -> str:
    assert flows.identity is not None
    files = list(inventory.files[:_LISTED_FILES])
    if len(inventory.files) > _LISTED_FILES:
        files.append(f"and {len(inventory.files) - _LISTED_FILES} more")
    asked = ""
    if inventory.since is not None or inventory.until is not None:
        asked = f" (asked: since {iso(inventory.since) or '-'}, until {iso(inventory.until) or '-'})"
    header = [
        "DRAFT EgressPolicy proposed by `authz inventory --propose` from observed traffic: review it before use.",
        f"Identity: {flows.identity}",
        f"Drawn from {sum(d.proposable for d in proposed):,} of its {flows.records:,} decisions, out of"
        f" {inventory.records:,} decisions in {len(inventory.files)} decision log file(s):",
        *(f"  {file}" for file in files),
        f"Records from {iso(inventory.first)} to {iso(inventory.last)}{asked}.",
        f"Generated at {iso(moment)} by authz {__version__}.",
        "Proposed: each destination (host and port) this identity was allowed to reach, or that only the",
        "allowlist denied (NO_MATCHING_RULE, UNKNOWN_IDENTITY, ZONE_NOT_ALLOWED, EXCEPTION_EXPIRED, dry-run).",
        "Never proposed: a destination only a guard denied (METADATA_ENDPOINT, SNI_HOST_MISMATCH,",
        "INVALID_IDENTITY, INVALID_DESTINATION, REVOKED) or the server (NO_POLICY, INTERNAL_ERROR, TIMEOUT).",
        "HTTP methods and paths seen are listed above each rule; add `http:` to a rule to narrow it.",
    ]
    unknown = sum(destination.reasons.get(Reason.UNKNOWN_IDENTITY, 0) for destination in flows.destinations)
    if unknown:
        header.append(f"No policy named this identity ({counted(unknown, 'record')} UNKNOWN_IDENTITY).")
    if left_out:
        header += ["Left out:", *(f"  {line}" for line in left_out)]
    zones = sorted({zone for destination in flows.destinations for zone in destination.zones})
    if zones:
        header.append(f"Zones seen: {', '.join(zones)} (add spec.zones to bind the policy to them).")
    header.append("To do: fill every TODO (owner, change_ref, each rule's purpose), settle each REVIEW,")
    header.append("then `authz check`, replay these logs against it, and enforce.")
    lines = [*(_comment(line) for line in header)]
    lines += [
        "apiVersion: egress-authz/v1",
        "kind: EgressPolicy",
        "metadata:",
        f"  name: {name}",
        f"  owner: {TODO}",
        f"  change_ref: {TODO}",
        "spec:",
        "  identities:",
        f"    - {_quoted(flows.identity)}",
        "  mode: enforce",
    ]
    if mismatch:
        lines.append(
            _comment(
                f"REVIEW: {counted(mismatch, 'allowed request')} named another TLS SNI than HTTP host", "  "
            )
        )
        lines.append("  allow_sni_host_mismatch: true")
    lines.append("  egress:" if rules else "  egress: []  # nothing seen that a rule should allow")
    for rule in rules:
        lines += [_comment(note, "    ") for note in rule.notes]
        lines += [
            f"    - id: {rule.id}",
            f"      hosts: [{_quoted(rule.host)}]",
            f"      ports: [{', '.join(map(str, rule.ports))}]",
            f"      purpose: {TODO}",
        ]
    return "\n".join(lines) + "\n"


def _comment(text: str, indent: str = "") -> str:
    """A YAML comment line: text from the logs (paths, file names) may hold a
    line break or a control character, which would end the comment and
    inject YAML; they are shown as ``?``."""
    return f"{indent}# " + "".join(c if c.isprintable() else "?" for c in text)


def _quoted(text: str) -> str:
    """A double-quoted YAML scalar (hosts and IDs are validated ASCII already)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unique(taken: set[str], candidates: list[str]) -> str:
    """The first candidate, as a policy or rule name (lower-case letters,
    digits, inner '-', 63 at most), not taken yet; else the first numbered."""
    names = [_as_name(candidate) for candidate in candidates]
    for name in names:
        if name not in taken:
            taken.add(name)
            return name
    for number in range(2, len(taken) + 3):
        name = f"{names[0][:58].rstrip('-')}-{number}"
        if name not in taken:
            taken.add(name)
            return name
    raise AssertionError("unreachable: fewer names are taken than tried")


def _as_name(text: str) -> str:
    name = _NOT_NAME.sub("-", text.lower()).strip("-")[:63].rstrip("-")
    return name or "workload"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@cache
def _public_suffixes() -> PublicSuffixList:
    """The Public Suffix List the package ships (no network), read once."""
    return PublicSuffixList()


def _check_loads(draft: Draft) -> None:
    try:
        (document,) = read_documents(draft.text)
        EgressPolicy.model_validate(document.data)
    except (YamlError, ValueError) as exc:
        raise ProposeError(f"draft {draft.file_name} does not load ({exc}): a bug, please report it") from exc
