"""What the workloads reach: per identity, the destinations in the decision
logs, with counts, first and last seen, verdicts, reasons, HTTP methods and
path prefixes; the destinations no rule stands behind; and, against a
policy, the rules the traffic never used and the identities on one side only.

The logs are read once: DuckDB groups every record into ``_flows``, a small
table (one row a distinct identity, destination, outcome, reason, rule,
zone, method and path prefix), and every figure is a query over that table.
Envoy's access log, when given, is read in the same pass, joined by decision
id (``authz.analysis.access_log``): each group carries its bytes. Python only
assembles the rows into the report.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from authz.analysis.access_log import AccessLogs, AccessLogSummary, byte_sums, records_with_bytes, summarize
from authz.analysis.compare import Comparison
from authz.analysis.logs import DecisionLogs, sql_instant
from authz.analysis.review import ALLOWED, KnownByPolicy, PolicyReview, review_policy
from authz.analysis.window import iso
from authz.core.compiled import CompiledPolicy
from authz.core.decision import DRY_RUN_RELAXES, Reason
from authz.core.destination import format_destination
from authz.policy.load import PolicySet

__all__ = [
    "PATH_DEPTH",
    "PROPOSABLE",
    "TOP",
    "Destination",
    "IdentityFlows",
    "Inventory",
    "path_prefix_sql",
    "take_inventory",
]

#: Path prefixes keep this many segments: ``/v1/payments/42?x=1`` is
#: ``/v1/payments/*``; a path of this many segments or fewer stays whole.
PATH_DEPTH = 2
#: Methods and path prefixes listed a destination, the busiest first; the rest are counted.
TOP = 10
#: What a draft policy may be drawn from: allowed, or denied by the allowlist
#: alone (what dry-run relaxes). Never a guard's deny (METADATA_ENDPOINT,
#: SNI_HOST_MISMATCH, INVALID_*, REVOKED) nor the server's own (NO_POLICY,
#: INTERNAL_ERROR, TIMEOUT).
PROPOSABLE: frozenset[str] = ALLOWED | {Reason.DRY_RUN} | (DRY_RUN_RELAXES - {Reason.NO_IDENTITY})

Outcome = Literal["allow", "deny", "would-deny", "mixed"]
Key = tuple[str | None, str | None, int | None]  # identity, host, port

_OUTCOME = (
    "CASE WHEN verdict = 'deny' THEN 'deny' "
    "WHEN would_verdict = 'deny' OR reason = 'DRY_RUN' THEN 'would_deny' ELSE 'allow' END"
)
# The TLS SNI names another host than the HTTP Host (one trailing dot and ASCII case aside).
_MISMATCH = (
    "sni IS NOT NULL AND http_host IS NOT NULL "
    "AND lower(regexp_replace(sni, '\\.$', '')) <> lower(regexp_replace(http_host, '\\.$', ''))"
)
_GROUPS = (
    "in_window, in_baseline, orphan, identity, host, port, outcome, reason, policy, rule, exception, zone, "
    "method, prefix"
)


def path_prefix_sql(column: str = "path", depth: int = PATH_DEPTH) -> str:
    """The SQL for a path's prefix: query and fragment cut off, then the
    first ``depth`` segments as an Istio prefix pattern (``/a/b/*``) when more
    follow, else the path itself; NULL for no path (a TLS connection)."""
    bare = f"regexp_extract({column}, '^[^?#]*')"
    return (
        f"CASE WHEN {column} IS NULL THEN NULL "
        f"WHEN regexp_matches({bare}, '^(/[^/]*){{{depth + 1}}}') "
        f"THEN regexp_extract({bare}, '^(/[^/]*){{{depth}}}') || '/*' ELSE {bare} END"
    )


@dataclass(frozen=True, slots=True)
class Destination:
    """One ``host:port`` an identity reached. ``allow``, ``deny`` and
    ``would_deny`` (allowed by dry-run, denied once enforced) add up to
    ``records``. ``methods`` and ``paths`` hold the TOP busiest, ``other_*``
    the records beyond them. ``sni_mismatch`` counts the proposable records
    whose TLS SNI named another host than the HTTP Host."""

    host: str | None
    port: int | None
    records: int
    first_seen: datetime
    last_seen: datetime
    allow: int
    deny: int
    would_deny: int
    reasons: Mapping[str, int]
    rules: Mapping[str, int]  # "policy/rule" (or exception) -> records it allowed or expired on
    methods: Mapping[str, int]
    other_methods: int
    paths: Mapping[str, int]
    other_paths: int
    zones: tuple[str, ...]
    sni_mismatch: int
    unknown: bool
    bytes_out: int | None = None  # to the destination, from the access log (None: none given)
    bytes_in: int | None = None
    logged: int | None = None  # records with an access-log line (None: none given)

    @property
    def destination(self) -> str:
        return format_destination(self.host or "-", self.port)

    @property
    def outcome(self) -> Outcome:
        """allow, deny or would-deny when all its records agree, else mixed."""
        present = [name for name, count in self._outcomes() if count]
        return present[0] if len(present) == 1 else "mixed"

    @property
    def proposable(self) -> int:
        """Records a draft policy may be drawn from (PROPOSABLE reasons)."""
        return sum(count for reason, count in self.reasons.items() if reason in PROPOSABLE)

    def _outcomes(self) -> list[tuple[Outcome, int]]:
        return [("allow", self.allow), ("deny", self.deny), ("would-deny", self.would_deny)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "host": self.host,
            "port": self.port,
            "records": self.records,
            "first_seen": iso(self.first_seen),
            "last_seen": iso(self.last_seen),
            "allow": self.allow,
            "deny": self.deny,
            "would_deny": self.would_deny,
            "outcome": self.outcome,
            "reasons": dict(self.reasons),
            "rules": dict(self.rules),
            "methods": dict(self.methods),
            "other_methods": self.other_methods,
            "paths": dict(self.paths),
            "other_paths": self.other_paths,
            "zones": list(self.zones),
            "sni_mismatch": self.sni_mismatch,
            "unknown": self.unknown,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "logged": self.logged,
        }


@dataclass(frozen=True, slots=True)
class IdentityFlows:
    """One identity (None: records without one) and its destinations, busiest first."""

    identity: str | None
    records: int
    first_seen: datetime
    last_seen: datetime
    allow: int
    deny: int
    would_deny: int
    policies: tuple[str, ...]  # the policies the log names for it
    destinations: tuple[Destination, ...]

    @property
    def unknown(self) -> tuple[Destination, ...]:
        return tuple(destination for destination in self.destinations if destination.unknown)

    @property
    def bytes_out(self) -> int | None:
        return _total(destination.bytes_out for destination in self.destinations)

    @property
    def bytes_in(self) -> int | None:
        return _total(destination.bytes_in for destination in self.destinations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "records": self.records,
            "first_seen": iso(self.first_seen),
            "last_seen": iso(self.last_seen),
            "allow": self.allow,
            "deny": self.deny,
            "would_deny": self.would_deny,
            "policies": list(self.policies),
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "destinations": [destination.to_dict() for destination in self.destinations],
        }


@dataclass(frozen=True, slots=True)
class Inventory:
    """The report: the files read, the window asked (``since``, ``until``) and
    found (``first``, ``last``), the records in it, the malformed lines
    skipped (in any window), the identities busiest first, and the review
    against a policy when one was given. ``unknown_by`` says what made a
    destination unknown: ``log`` (no record to it was allowed by a rule or
    exception) or ``policy`` (no rule or open exception of the identity's
    policy names its host and admits its port)."""

    files: tuple[str, ...]
    since: datetime | None
    until: datetime | None
    first: datetime | None
    last: datetime | None
    records: int
    malformed: int
    identities: tuple[IdentityFlows, ...]
    unknown_by: Literal["log", "policy"]
    review: PolicyReview | None = None
    access: AccessLogSummary | None = None  # with --access-log
    comparison: Comparison | None = None  # with --compare-to or --baseline-window

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape; its keys are a contract (README "Inventory")."""
        return {
            "files": list(self.files),
            "window": {
                "since": iso(self.since),
                "until": iso(self.until),
                "first": iso(self.first),
                "last": iso(self.last),
            },
            "records": self.records,
            "malformed": self.malformed,
            "unknown_by": self.unknown_by,
            "identities": [flows.to_dict() for flows in self.identities],
            "policy": self.review.to_dict() if self.review is not None else None,
            "access_log": self.access.to_dict() if self.access is not None else None,
            "comparison": self.comparison.to_dict() if self.comparison is not None else None,
        }


def take_inventory(
    logs: DecisionLogs,
    policy: tuple[PolicySet, CompiledPolicy] | None = None,
    *,
    access: AccessLogs | None = None,
    baseline: tuple[datetime, datetime] | None = None,
    now: float | None = None,
) -> Inventory:
    """The inventory of ``logs`` (their window); with ``policy``, unknown
    destinations are judged by it (exceptions open at ``now``, default the
    clock) and the review is added; with ``access``, the bytes of each
    destination. ``baseline`` [start, end) marks the records of a baseline
    period in ``_flows`` (``in_baseline``), for a comparison."""
    with ThreadPoolExecutor(2) as pool:  # the lines counted while DuckDB reads: the file is in the page cache
        lines = pool.submit(logs.count_lines)
        access_lines = pool.submit(access.count_lines) if access is not None else None
        aggregate_flows(logs, access, baseline)
    (total, records, first, last) = logs.db.execute(
        "SELECT coalesce(sum(n), 0), coalesce(sum(n) FILTER (WHERE in_window), 0), "
        "min(first_seen) FILTER (WHERE in_window), max(last_seen) FILTER (WHERE in_window) FROM _flows"
    ).fetchone() or (0, 0, None, None)
    malformed = logs.count_malformed(int(total), lines.result())
    compiled = policy[1] if policy is not None else None
    known = KnownByPolicy(compiled, time.time() if now is None else now) if compiled is not None else None
    identities = _identities(logs, known, access is not None)
    seen = (flows.identity for flows in identities if flows.identity is not None)
    review = review_policy(logs, seen, *policy) if policy is not None else None
    return Inventory(
        files=logs.files,
        since=logs.since,
        until=logs.until,
        first=first,
        last=last,
        records=int(records),
        malformed=malformed,
        identities=identities,
        unknown_by="policy" if policy is not None else "log",
        review=review,
        access=summarize(logs, access, "_flows", access_lines.result())
        if access is not None and access_lines is not None
        else None,
    )


def aggregate_flows(
    logs: DecisionLogs, access: AccessLogs | None = None, baseline: tuple[datetime, datetime] | None = None
) -> None:
    """The one pass over the logs (and the access log): every record into its
    group of ``_flows``, with the bytes of its access-log lines; the access
    log's lines of no record in groups of their own (``orphan``)."""
    in_baseline = (
        f"(ts >= {sql_instant(baseline[0])} AND ts < {sql_instant(baseline[1])})" if baseline else "FALSE"
    )
    logs.db.execute(
        f"CREATE OR REPLACE TEMP TABLE _flows AS SELECT {_GROUPS}, count(ts) AS n, min(ts) AS first_seen, "
        f"max(ts) AS last_seen, count(*) FILTER (WHERE mismatch) AS sni_mismatch, {byte_sums(access)} FROM (SELECT *, "
        f"{_OUTCOME} AS outcome, {path_prefix_sql()} AS prefix, {_MISMATCH} AS mismatch, "
        f"{in_baseline} AS in_baseline FROM ({records_with_bytes(access)})) GROUP BY {_GROUPS}"
    )


def _rows(logs: DecisionLogs, select: str, where: str = "TRUE", group: str = "") -> list[tuple[Any, ...]]:
    """Rows of the flows in the window, grouped by destination (and ``group``)."""
    keys = "identity, host, port" + (f", {group}" if group else "")
    return logs.query(f"SELECT {keys}, {select} FROM _flows WHERE in_window AND {where} GROUP BY {keys}")


def _counts(rows: Iterable[tuple[Any, ...]]) -> dict[Key, dict[str, int]]:
    """(identity, host, port, name, count) rows as {destination: {name: count}}."""
    found: dict[Key, dict[str, int]] = defaultdict(dict)
    for identity, host, port, name, count in rows:
        found[identity, host, port][name] = int(count)
    return found


def _top(logs: DecisionLogs, column: str) -> dict[Key, tuple[dict[str, int], int]]:
    """The TOP busiest values of ``column`` a destination, and the records of the rest."""
    rows = logs.query(
        f"SELECT identity, host, port, CASE WHEN rank <= {TOP} THEN value END AS kept, sum(n) FROM ("
        f"SELECT identity, host, port, {column} AS value, sum(n) AS n, row_number() OVER (PARTITION BY "
        f"identity, host, port ORDER BY sum(n) DESC, {column}) AS rank FROM _flows "
        f"WHERE in_window AND {column} IS NOT NULL GROUP BY identity, host, port, {column}) "
        "GROUP BY ALL ORDER BY sum(n) DESC, kept"
    )
    found: dict[Key, tuple[dict[str, int], int]] = defaultdict(lambda: ({}, 0))
    for identity, host, port, value, count in rows:
        kept, _ = found[identity, host, port]
        if value is None:
            found[identity, host, port] = (kept, int(count))
        else:
            kept[value] = int(count)
    return found


def _identities(
    logs: DecisionLogs, known: KnownByPolicy | None, with_bytes: bool
) -> tuple[IdentityFlows, ...]:
    proposable = ", ".join(f"'{reason}'" for reason in sorted(PROPOSABLE))
    outcomes = (
        "sum(n) AS records, min(first_seen), max(last_seen), coalesce(sum(n) FILTER (WHERE outcome = 'allow'), 0), "
        "coalesce(sum(n) FILTER (WHERE outcome = 'deny'), 0), "
        "coalesce(sum(n) FILTER (WHERE outcome = 'would_deny'), 0)"
    )
    reasons = _counts(_rows(logs, "sum(n)", group="reason"))
    named = "coalesce(policy, '-') || '/' || coalesce(rule, exception)"
    rules = _counts(_rows(logs, "sum(n)", "rule IS NOT NULL OR exception IS NOT NULL", named))
    methods, paths = _top(logs, "method"), _top(logs, "prefix")
    by_identity: dict[str | None, list[Destination]] = defaultdict(list)
    for (
        identity,
        host,
        port,
        records,
        first,
        last,
        allow,
        deny,
        would_deny,
        mismatch,
        zones,
        out,
        into,
        logged,
    ) in _rows(
        logs,
        f"{outcomes}, coalesce(sum(sni_mismatch) FILTER (WHERE reason IN ({proposable})), 0), "
        "list(DISTINCT zone ORDER BY zone) FILTER (WHERE zone IS NOT NULL), sum(bytes_out), sum(bytes_in), "
        "sum(logged)",
    ):
        key = (identity, host, port)
        kept_methods, other_methods = methods.get(key, ({}, 0))
        kept_paths, other_paths = paths.get(key, ({}, 0))
        seen = reasons.get(key, {})
        unknown = (
            known.unknown(identity, host, port) if known is not None else not any(r in ALLOWED for r in seen)
        )
        by_identity[identity].append(
            Destination(
                host=host,
                port=port,
                records=int(records),
                first_seen=first,
                last_seen=last,
                allow=int(allow),
                deny=int(deny),
                would_deny=int(would_deny),
                reasons=_by_count(seen),
                rules=_by_count(rules.get(key, {})),
                methods=kept_methods,
                other_methods=other_methods,
                paths=kept_paths,
                other_paths=other_paths,
                zones=tuple(zones or ()),
                sni_mismatch=int(mismatch),
                unknown=unknown,
                bytes_out=int(out) if with_bytes else None,
                bytes_in=int(into) if with_bytes else None,
                logged=int(logged) if with_bytes else None,
            )
        )
    flows = []
    for identity, records, first, last, allow, deny, would_deny, policies in logs.query(
        f"SELECT identity, {outcomes}, list(DISTINCT policy ORDER BY policy) FILTER (WHERE policy IS NOT NULL) "
        "FROM _flows WHERE in_window GROUP BY identity ORDER BY records DESC, identity NULLS LAST"
    ):
        destinations = sorted(by_identity[identity], key=lambda d: (-d.records, d.destination))
        flows.append(
            IdentityFlows(
                identity=identity,
                records=int(records),
                first_seen=first,
                last_seen=last,
                allow=int(allow),
                deny=int(deny),
                would_deny=int(would_deny),
                policies=tuple(policies or ()),
                destinations=tuple(destinations),
            )
        )
    return tuple(flows)


def _total(counts: Iterable[int | None]) -> int | None:
    """The sum, or None when the counts are unknown (no access log)."""
    known = [count for count in counts if count is not None]
    return sum(known) if known else None


def _by_count(counts: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
