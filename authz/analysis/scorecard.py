"""The egress risk scorecard: the monthly review's metrics (authz/analysis/
metrics.py, each with its definition) from the decision logs and the policy
files. The logs are aggregated in DuckDB, read once; only the small results
reach Python."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from authz.analysis.access_log import AccessLogs, byte_sums, records_with_bytes, summarize
from authz.analysis.logs import DecisionLogs
from authz.analysis.metrics import (
    BytesByIdentity,
    BytesToUnapproved,
    DeniesOverTime,
    DestinationBytes,
    DryRunPolicy,
    DryRunRates,
    ExceptionHalfLife,
    ExceptionsOpen,
    ExceptionUse,
    FirstSeen,
    IdentityBytes,
    IdentityCoverage,
    IdentityFirstSeen,
    Rate,
    RemovedException,
    RevocationTime,
    RevocationTimes,
    Scorecard,
    UnknownDestinations,
)
from authz.core.decision import Mode
from authz.core.destination import format_destination
from authz.policy.exceptions import exception_report
from authz.policy.history import Revision, exception_lives
from authz.policy.load import PolicySet

__all__ = ["compute"]

#: The reason a check was decided by: under dry-run the one it would have been denied for.
WHY = "coalesce(CASE WHEN reason = 'DRY_RUN' THEN dry_run_reason ELSE reason END, '-')"
VERIFIED = f"(identity IS NOT NULL AND {WHY} NOT IN ('NO_IDENTITY', 'INVALID_IDENTITY'))"
#: A verified caller's check whose destination nothing approves for it (the unknown destination rate).
UNAPPROVED = "(verified AND why IN ('NO_MATCHING_RULE', 'EXCEPTION_EXPIRED', 'UNKNOWN_IDENTITY'))"
RECENT = timedelta(days=7)  # "new" first-seen destinations: those of the log's last week
NEWEST = 3  # first-seen destinations listed per identity
TOP_UNKNOWN = 10  # unknown destinations listed
TOP_BYTES = 10  # identities and unapproved destinations listed by bytes
EXPIRING_WITHIN = 7 * 86400.0  # seconds: an exception this close to its expiry is "expiring"


def compute(
    logs: DecisionLogs,
    policy_set: PolicySet,
    policy_paths: Sequence[str],
    *,
    history: Sequence[Revision] | None = None,
    access: AccessLogs | None = None,
    now: datetime | None = None,
) -> Scorecard:
    """Every metric. ``history`` (the policy repository's revisions) gives the
    exception half-life; ``access`` (Envoy's access log) the bytes;
    ``now`` is the report time (exceptions' state)."""
    now = now or datetime.now(UTC)
    _facts(logs, policy_set, access)
    first, last, checks = logs.query("SELECT min(first), max(last), coalesce(sum(n), 0) FROM facts")[0]
    start, end = _utc(first), _utc(last)
    return Scorecard(
        generated=now,
        files=logs.files,
        policy_paths=tuple(policy_paths),
        policy_version=policy_set.version,
        start=start,
        end=end,
        checks=int(checks),
        malformed=logs.malformed,
        identity_coverage=_identity_coverage(logs),
        unknown_destinations=_unknown_destinations(logs),
        first_seen=_first_seen(logs, end),
        exceptions=_exceptions_open(logs, policy_set, now),
        exception_half_life=_exception_half_life(history),
        revocation_time=_revocation_times(logs, policy_set, start),
        dry_run=_dry_run_rates(logs, policy_set),
        denies=_denies_over_time(logs, start, end),
        bytes_by_identity=_bytes_by_identity(logs) if access else BytesByIdentity(computed=False),
        bytes_to_unapproved=_bytes_to_unapproved(logs) if access else BytesToUnapproved(computed=False),
        access=summarize(logs, access, "_facts_all", access.count_lines()) if access else None,
    )


def _facts(logs: DecisionLogs, policy_set: PolicySet, access: AccessLogs | None) -> None:
    """The logs read once (each query of the ``decisions`` view parses them
    again), into counts by everything a metric tells apart, per hour: as
    many rows as distinct (hour, identity, destination, outcome), not records.
    ``revoked_after``: a REVOKED decision at or after its revocation's ``at``."""
    revoked: dict[str, datetime] = {}  # a pattern revoked twice (compile refuses it) counts from its first
    for entry in (entry for loaded in policy_set.revocations for entry in loaded.model.spec.revoked):
        pattern, since = str(entry.identity), _naive(entry.at)
        revoked[pattern] = min(since, revoked.get(pattern, since))
    logs.query("CREATE OR REPLACE TEMP TABLE revoked (pattern VARCHAR, since TIMESTAMP)")
    if revoked:
        logs.db.executemany("INSERT INTO revoked VALUES (?, ?)", list(revoked.items()))
    # With the access log joined: its lines of no decision in groups of their own (``orphan``), which
    # the ``facts`` view leaves out, so that no metric counts them as checks.
    logs.query(
        "CREATE OR REPLACE TEMP TABLE _facts_all AS SELECT date_trunc('hour', ts) AS hour, "
        f"{VERIFIED} AS verified, {WHY} AS why, coalesce(reason, '-') AS reason, verdict, would_verdict, "
        "identity, host, port, policy, exception, revocation, in_window, orphan, "
        "reason = 'REVOKED' AND ts >= (SELECT since FROM revoked WHERE pattern = revocation) "
        f"AS revoked_after, count(ts) AS n, min(ts) AS first, max(ts) AS last, {byte_sums(access)} "
        f"FROM ({records_with_bytes(access)}) WHERE in_window OR orphan IS NOT NULL GROUP BY ALL"
    )
    logs.query("CREATE OR REPLACE TEMP VIEW facts AS SELECT * FROM _facts_all WHERE orphan IS NULL")


def _identity_coverage(logs: DecisionLogs) -> IdentityCoverage:
    rows = logs.query("SELECT verified, why, sum(n) FROM facts GROUP BY ALL")
    verified = sum(count for ok, _, count in rows if ok)
    unverified = _ranked((why, count) for ok, why, count in rows if not ok)
    return IdentityCoverage(Rate(int(verified), int(sum(count for *_, count in rows))), unverified)


def _unknown_destinations(logs: DecisionLogs) -> UnknownDestinations:
    (verified,) = logs.query("SELECT coalesce(sum(n), 0) FROM facts WHERE verified")[0]
    by_reason = _ranked(logs.query(f"SELECT why, sum(n) FROM facts WHERE {UNAPPROVED} GROUP BY ALL"))
    top = logs.query(
        f"SELECT identity, host, port, sum(n) AS checks FROM facts WHERE {UNAPPROVED} "
        f"GROUP BY ALL ORDER BY checks DESC, identity, host, port LIMIT {TOP_UNKNOWN}"
    )
    return UnknownDestinations(
        Rate(sum(by_reason.values()), int(verified)),
        by_reason,
        [(identity, _destination(host, port), int(n)) for identity, host, port, n in top],
    )


def _first_seen(logs: DecisionLogs, end: datetime | None) -> FirstSeen:
    if end is None:
        return FirstSeen(None, [])
    since = end - RECENT
    rows = logs.query(
        "WITH firsts AS (SELECT identity, host, port, min(first) AS first FROM facts "
        "WHERE verified AND host IS NOT NULL GROUP BY ALL) "
        "SELECT identity, count(*), count(*) FILTER (WHERE first > ?) AS recent, "
        f"list({{'host': host, 'port': port, 'first': first}} ORDER BY first DESC, host, port)[1:{NEWEST}] "
        "FROM firsts GROUP BY identity ORDER BY recent DESC, count(*) DESC, identity",
        [_naive(since)],
    )
    return FirstSeen(
        since,
        [
            IdentityFirstSeen(
                identity,
                int(total),
                int(recent),
                [(_destination(new["host"], new["port"]), _aware(new["first"])) for new in newest],
            )
            for identity, total, recent, newest in rows
        ],
    )


def _exceptions_open(logs: DecisionLogs, policy_set: PolicySet, now: datetime) -> ExceptionsOpen:
    usage = {
        (policy, exception): (int(uses), _utc(last_used), int(expired))
        for policy, exception, uses, last_used, expired in logs.query(
            "SELECT policy, exception, coalesce(sum(n) FILTER (WHERE why = 'ALLOWED_BY_EXCEPTION'), 0), "
            "max(last) FILTER (WHERE why = 'ALLOWED_BY_EXCEPTION'), "
            "coalesce(sum(n) FILTER (WHERE why = 'EXCEPTION_EXPIRED'), 0) "
            "FROM facts WHERE exception IS NOT NULL GROUP BY ALL"
        )
    }
    found = []
    for status in exception_report(policy_set, now.timestamp(), EXPIRING_WITHIN):
        uses, last_used, expired = usage.get((status.policy, status.id), (0, None, 0))
        found.append(
            ExceptionUse(status.policy, status.id, status.owner, status.ticket, _parse(status.expires),
                         status.state, uses, last_used, expired)
        )  # fmt: skip
    return ExceptionsOpen(sum(use.state != "expired" for use in found), found)


def _exception_half_life(history: Sequence[Revision] | None) -> ExceptionHalfLife:
    if history is None:
        return ExceptionHalfLife(computed=False, median=None)
    lives = exception_lives(history)
    removed = sorted(
        (
            RemovedException(life.policy, life.exception, life.ticket, life.added, life.removed)
            for life in lives
            if life.removed is not None
        ),
        key=lambda gone: (gone.removed, gone.policy, gone.id),
        reverse=True,
    )
    median = (
        timedelta(seconds=statistics.median(gone.age.total_seconds() for gone in removed))
        if removed
        else None
    )
    still_open = sum(life.removed is None for life in lives)
    return ExceptionHalfLife(computed=True, median=median, removed=removed, still_open=still_open)


def _revocation_times(logs: DecisionLogs, policy_set: PolicySet, start: datetime | None) -> RevocationTimes:
    observed = {
        pattern: (_utc(first), int(count))
        for pattern, first, count in logs.query(
            "SELECT revocation, min(first), sum(n) FROM facts WHERE revoked_after GROUP BY revocation"
        )
    }
    found = []
    for loaded in policy_set.revocations:
        for entry in loaded.model.spec.revoked:
            first, count = observed.get(str(entry.identity), (None, 0))
            found.append(
                RevocationTime(str(entry.identity), entry.ticket, entry.at.astimezone(UTC), first, count,
                               upper_bound=start is not None and start > entry.at)
            )  # fmt: skip
    return RevocationTimes(sorted(found, key=lambda revocation: revocation.at, reverse=True))


def _dry_run_rates(logs: DecisionLogs, policy_set: PolicySet) -> DryRunRates:
    names = sorted(
        loaded.model.metadata.name for loaded in policy_set.policies if loaded.model.spec.mode is Mode.DRY_RUN
    )
    rows = logs.query(
        "SELECT policy, CASE WHEN would_verdict = 'deny' THEN why END, sum(n) "
        "FROM facts WHERE list_contains(?, policy) GROUP BY ALL",
        [names],
    )
    found = []
    for name in names:
        counts = [(why, int(count)) for policy, why, count in rows if policy == name]
        reasons = _ranked((why, count) for why, count in counts if why is not None)
        found.append(DryRunPolicy(name, Rate(sum(reasons.values()), sum(n for _, n in counts)), reasons))
    return DryRunRates(found)


def _denies_over_time(logs: DecisionLogs, start: datetime | None, end: datetime | None) -> DeniesOverTime:
    if start is None or end is None:
        return DeniesOverTime("day", [], {})
    bucket: Literal["day", "hour"] = "hour" if end - start < timedelta(days=2) else "day"
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    first = _truncate(start, bucket)
    starts = [first + step * index for index in range((_truncate(end, bucket) - first) // step + 1)]
    rows = logs.query(
        f"SELECT date_trunc('{bucket}', hour), reason, sum(n) FROM facts WHERE verdict = 'deny' GROUP BY ALL"
    )
    index = {moment: position for position, moment in enumerate(starts)}
    counts: dict[str, list[int]] = {}
    for moment, reason, count in rows:
        counts.setdefault(reason, [0] * len(starts))[index[_aware(moment)]] = int(count)
    ranked = sorted(counts.items(), key=lambda item: (-sum(item[1]), item[0]))
    return DeniesOverTime(bucket, starts, dict(ranked))


def _bytes_by_identity(logs: DecisionLogs) -> BytesByIdentity:
    ((out, into),) = logs.query("SELECT coalesce(sum(bytes_out), 0), coalesce(sum(bytes_in), 0) FROM facts")
    rows = logs.query(
        "SELECT identity, sum(bytes_out) AS out, sum(bytes_in), sum(n) "
        f"FROM facts GROUP BY identity HAVING out > 0 ORDER BY out DESC, identity NULLS LAST LIMIT {TOP_BYTES}"
    )
    top = [IdentityBytes(identity, int(o), int(i), int(n)) for identity, o, i, n in rows]
    return BytesByIdentity(True, int(out), int(into), top)


def _bytes_to_unapproved(logs: DecisionLogs) -> BytesToUnapproved:
    rows = logs.query(
        "SELECT host, port, sum(bytes_out) AS out, sum(bytes_in), sum(n), count(DISTINCT identity) "
        f"FROM facts WHERE {UNAPPROVED} GROUP BY host, port HAVING out > 0 ORDER BY out DESC, host, port"
    )
    found = [
        DestinationBytes(_destination(host, port), int(o), int(i), int(n), int(callers))
        for host, port, o, i, n, callers in rows
    ]
    return BytesToUnapproved(True, sum(d.bytes_out for d in found), found[:TOP_BYTES])


def _ranked(pairs: Any) -> dict[str, int]:
    """Counts by key, the largest first (ties by key), for stable reports."""
    return dict(
        sorted(((str(key), int(count)) for key, count in pairs), key=lambda item: (-item[1], item[0]))
    )


def _destination(host: str | None, port: int | None) -> str:
    return format_destination(host or "-", port)


def _truncate(moment: datetime, bucket: str) -> datetime:
    moment = moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if bucket == "day" else moment


def _utc(moment: datetime | None) -> datetime | None:
    """A naive UTC TIMESTAMP from DuckDB as an aware datetime (None stays None)."""
    return None if moment is None else _aware(moment)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC)


def _naive(moment: datetime) -> datetime:
    """As ``ts`` is: naive UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def _parse(text: str) -> datetime:
    """An RFC 3339 time as written in a policy file, in UTC."""
    return datetime.fromisoformat(text).astimezone(UTC)
