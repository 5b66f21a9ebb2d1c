"""The egress risk scorecard: the monthly review's metrics from the decision
logs and the policy files, each with the one-sentence definition it is
computed by (shown in the report, so a number is never read without it).
The logs are aggregated in DuckDB; only the small results reach Python."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal

from authz.analysis.logs import DecisionLogs
from authz.core.decision import Mode
from authz.core.destination import format_destination
from authz.policy.exceptions import exception_report
from authz.policy.history import Revision, exception_lives
from authz.policy.load import PolicySet

__all__ = [
    "DeniesOverTime",
    "DryRunPolicy",
    "DryRunRates",
    "ExceptionHalfLife",
    "ExceptionUse",
    "ExceptionsOpen",
    "FirstSeen",
    "IdentityCoverage",
    "IdentityFirstSeen",
    "Rate",
    "RemovedException",
    "RevocationTime",
    "RevocationTimes",
    "Scorecard",
    "UnknownDestinations",
    "compute",
]

#: The reason a check was decided by: under dry-run the one it would have been denied for.
WHY = "(CASE WHEN reason = 'DRY_RUN' THEN dry_run_reason ELSE reason END)"
VERIFIED = f"(identity IS NOT NULL AND coalesce({WHY}, '') NOT IN ('NO_IDENTITY', 'INVALID_IDENTITY'))"
#: A verified caller's check whose destination nothing approves for it (the unknown destination rate).
UNAPPROVED = f"({VERIFIED} AND {WHY} IN ('NO_MATCHING_RULE', 'EXCEPTION_EXPIRED', 'UNKNOWN_IDENTITY'))"
RECENT = timedelta(days=7)  # "new" first-seen destinations: those of the log's last week
NEWEST = 3  # first-seen destinations listed per identity
TOP_UNKNOWN = 10  # unknown destinations listed
EXPIRING_WITHIN = 7 * 86400.0  # seconds: an exception this close to its expiry is "expiring"


@dataclass(frozen=True, slots=True)
class Rate:
    numerator: int
    denominator: int

    @property
    def value(self) -> float | None:
        """The share, or None when there is nothing to divide by."""
        return self.numerator / self.denominator if self.denominator else None


@dataclass(frozen=True, slots=True)
class IdentityCoverage:
    TITLE: ClassVar[str] = "Identity coverage"
    DEFINITION: ClassVar[str] = (
        "Share of checks with a verified identity: a record whose identity is present and whose reason "
        "(under dry-run, the reason it would have been denied for) is neither NO_IDENTITY nor INVALID_IDENTITY."
    )
    rate: Rate
    unverified: dict[str, int]  # the checks without one, by reason


@dataclass(frozen=True, slots=True)
class UnknownDestinations:
    TITLE: ClassVar[str] = "Unknown destination rate"
    DEFINITION: ClassVar[str] = (
        "Share of the checks with a verified identity whose destination no rule and no live exception "
        "approves for that identity: reason (under dry-run, the would-deny reason) NO_MATCHING_RULE, "
        "EXCEPTION_EXPIRED or UNKNOWN_IDENTITY (an identity no policy names has nothing approved)."
    )
    rate: Rate
    by_reason: dict[str, int]
    top: list[tuple[str, str, int]]  # (identity, host:port, checks), most checks first


@dataclass(frozen=True, slots=True)
class IdentityFirstSeen:
    identity: str
    destinations: int  # distinct host:port pairs, each first seen somewhere in the logs
    recent: int  # of which first seen in the logs' last week
    newest: list[tuple[str, datetime]]  # (host:port, first seen), newest first


@dataclass(frozen=True, slots=True)
class FirstSeen:
    TITLE: ClassVar[str] = "First-seen destinations per identity"
    DEFINITION: ClassVar[str] = (
        "Per verified identity, the host:port pairs it asked for, each dated by its first appearance in all "
        "the logs read (not the per-process first_seen key), with how many first appeared in the logs' "
        "last 7 days."
    )
    recent_since: datetime | None
    identities: list[IdentityFirstSeen]  # most recent first-sightings first


@dataclass(frozen=True, slots=True)
class ExceptionUse:
    policy: str
    id: str
    owner: str
    ticket: str
    expires: datetime
    state: str  # open, expiring (within 7 days), expired (still in the file)
    uses: int  # ALLOWED_BY_EXCEPTION decisions naming it
    last_used: datetime | None
    after_expiry: int  # EXCEPTION_EXPIRED decisions naming it


@dataclass(frozen=True, slots=True)
class ExceptionsOpen:
    TITLE: ClassVar[str] = "Exceptions open and their usage"
    DEFINITION: ClassVar[str] = (
        "The break-glass exceptions in the policy files at report time, each with the checks it allowed "
        "(ALLOWED_BY_EXCEPTION) and those it would have allowed but had expired (EXCEPTION_EXPIRED) in the logs."
    )
    open: int  # not yet expired
    exceptions: list[ExceptionUse]  # soonest expiry first


@dataclass(frozen=True, slots=True)
class RemovedException:
    policy: str
    id: str
    ticket: str | None
    added: datetime
    removed: datetime

    @property
    def age(self) -> timedelta:
        return self.removed - self.added


@dataclass(frozen=True, slots=True)
class ExceptionHalfLife:
    TITLE: ClassVar[str] = "Exception half-life"
    DEFINITION: ClassVar[str] = (
        "Median age of break-glass exceptions at their removal: from the commit that added each to the "
        "commit that removed it, in the policy repository's git history."
    )
    computed: bool  # False without --git
    median: timedelta | None  # None when none was removed (or not computed)
    removed: list[RemovedException] = field(default_factory=list)  # newest removal first
    still_open: int = 0  # in the newest revision


@dataclass(frozen=True, slots=True)
class RevocationTime:
    identity: str  # the revoked identity pattern, as the decisions name it
    ticket: str | None
    at: datetime
    first_revoked: datetime | None  # None: never observed
    revoked_checks: int  # REVOKED decisions naming it, from ``at`` on
    upper_bound: bool  # the logs begin after ``at``: an earlier REVOKED may be missing

    @property
    def elapsed(self) -> timedelta | None:
        return None if self.first_revoked is None else self.first_revoked - self.at


@dataclass(frozen=True, slots=True)
class RevocationTimes:
    TITLE: ClassVar[str] = "Revocation time"
    DEFINITION: ClassVar[str] = (
        "Per revoked identity (or prefix) in the EgressRevocation files, the time from its at (when it was "
        "revoked) to the first REVOKED decision naming it at or after then; never observed when the logs hold none."
    )
    revocations: list[RevocationTime]


@dataclass(frozen=True, slots=True)
class DryRunPolicy:
    policy: str
    rate: Rate  # checks the policy would have denied, of all its checks
    reasons: dict[str, int]  # the would-deny reasons


@dataclass(frozen=True, slots=True)
class DryRunRates:
    TITLE: ClassVar[str] = "Dry-run policies and their would-deny rate"
    DEFINITION: ClassVar[str] = (
        "Per policy in dry-run mode in the policy files, the share of its checks in the logs that the "
        "policy would have denied (would_verdict deny)."
    )
    policies: list[DryRunPolicy]


@dataclass(frozen=True, slots=True)
class DeniesOverTime:
    TITLE: ClassVar[str] = "Denies by reason over time"
    DEFINITION: ClassVar[str] = (
        "Enforced denies (verdict deny; dry-run would-denies are not) per reason, per UTC day, or per hour "
        "when the logs span under two days."
    )
    bucket: Literal["day", "hour"]
    starts: list[datetime]  # every bucket of the period, empty ones included
    counts: dict[str, list[int]]  # reason -> denies in each bucket, most denies first

    @property
    def total(self) -> int:
        return sum(map(sum, self.counts.values()))


@dataclass(frozen=True, slots=True)
class Scorecard:
    generated: datetime
    files: tuple[str, ...]
    policy_paths: tuple[str, ...]
    policy_version: str
    start: datetime | None  # the first and last record's time; None for no records
    end: datetime | None
    checks: int
    malformed: int
    identity_coverage: IdentityCoverage
    unknown_destinations: UnknownDestinations
    first_seen: FirstSeen
    exceptions: ExceptionsOpen
    exception_half_life: ExceptionHalfLife
    revocation_time: RevocationTimes
    dry_run: DryRunRates
    denies: DeniesOverTime

    METRICS: ClassVar[tuple[str, ...]] = (
        "identity_coverage",
        "unknown_destinations",
        "first_seen",
        "exceptions",
        "exception_half_life",
        "revocation_time",
        "dry_run",
        "denies",
    )


def compute(
    logs: DecisionLogs,
    policy_set: PolicySet,
    policy_paths: Sequence[str],
    *,
    history: Sequence[Revision] | None = None,
    now: datetime | None = None,
) -> Scorecard:
    """Every metric. ``history`` (the policy repository's revisions) gives the
    exception half-life; ``now`` is the report time (exceptions' state)."""
    now = now or datetime.now(UTC)
    first, last, checks = logs.query("SELECT min(ts), max(ts), count(*) FROM decisions")[0]
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
        identity_coverage=identity_coverage(logs),
        unknown_destinations=unknown_destinations(logs),
        first_seen=first_seen(logs, end),
        exceptions=exceptions_open(logs, policy_set, now),
        exception_half_life=exception_half_life(history),
        revocation_time=revocation_times(logs, policy_set, start),
        dry_run=dry_run_rates(logs, policy_set),
        denies=denies_over_time(logs, start, end),
    )


def identity_coverage(logs: DecisionLogs) -> IdentityCoverage:
    rows = logs.query(f"SELECT {VERIFIED}, coalesce({WHY}, '-'), count(*) FROM decisions GROUP BY ALL")
    verified = sum(count for ok, _, count in rows if ok)
    unverified = _ranked((why, count) for ok, why, count in rows if not ok)
    return IdentityCoverage(Rate(verified, sum(count for *_, count in rows)), unverified)


def unknown_destinations(logs: DecisionLogs) -> UnknownDestinations:
    (verified,) = logs.query(f"SELECT count(*) FROM decisions WHERE {VERIFIED}")[0]
    by_reason = _ranked(logs.query(f"SELECT {WHY}, count(*) FROM decisions WHERE {UNAPPROVED} GROUP BY ALL"))
    top = logs.query(
        f"SELECT identity, host, port, count(*) AS n FROM decisions WHERE {UNAPPROVED} "
        f"GROUP BY ALL ORDER BY n DESC, identity, host, port LIMIT {TOP_UNKNOWN}"
    )
    return UnknownDestinations(
        Rate(sum(by_reason.values()), int(verified)),
        by_reason,
        [(identity, _destination(host, port), int(n)) for identity, host, port, n in top],
    )


def first_seen(logs: DecisionLogs, end: datetime | None) -> FirstSeen:
    if end is None:
        return FirstSeen(None, [])
    since = end - RECENT
    rows = logs.query(
        "WITH firsts AS (SELECT identity, host, port, min(ts) AS first FROM decisions "
        f"WHERE {VERIFIED} AND host IS NOT NULL GROUP BY ALL) "
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


def exceptions_open(logs: DecisionLogs, policy_set: PolicySet, now: datetime) -> ExceptionsOpen:
    usage = {
        (policy, exception): (int(uses), _utc(last_used), int(expired))
        for policy, exception, uses, last_used, expired in logs.query(
            f"SELECT policy, exception, count(*) FILTER (WHERE {WHY} = 'ALLOWED_BY_EXCEPTION'), "
            f"max(ts) FILTER (WHERE {WHY} = 'ALLOWED_BY_EXCEPTION'), "
            f"count(*) FILTER (WHERE {WHY} = 'EXCEPTION_EXPIRED') "
            "FROM decisions WHERE exception IS NOT NULL GROUP BY ALL"
        )
    }
    found = []
    for status in exception_report(policy_set, now.timestamp(), EXPIRING_WITHIN):
        uses, last_used, expired = usage.get((status.policy, status.id), (0, None, 0))
        found.append(
            ExceptionUse(status.policy, status.id, status.owner, status.ticket, _parse(status.expires), status.state,
                         uses, last_used, expired)
        )  # fmt: skip
    return ExceptionsOpen(sum(use.state != "expired" for use in found), found)


def exception_half_life(history: Sequence[Revision] | None) -> ExceptionHalfLife:
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


def revocation_times(logs: DecisionLogs, policy_set: PolicySet, start: datetime | None) -> RevocationTimes:
    found = []
    for loaded in policy_set.revocations:
        for entry in loaded.model.spec.revoked:
            pattern = str(entry.identity)
            first, count = logs.query(
                "SELECT min(ts), count(*) FROM decisions WHERE reason = 'REVOKED' AND revocation = ? AND ts >= ?",
                [pattern, _naive(entry.at)],
            )[0]
            found.append(
                RevocationTime(pattern, entry.ticket, entry.at.astimezone(UTC), _utc(first), int(count),
                               upper_bound=start is not None and start > entry.at)
            )  # fmt: skip
    return RevocationTimes(sorted(found, key=lambda revocation: revocation.at, reverse=True))


def dry_run_rates(logs: DecisionLogs, policy_set: PolicySet) -> DryRunRates:
    names = sorted(
        loaded.model.metadata.name for loaded in policy_set.policies if loaded.model.spec.mode is Mode.DRY_RUN
    )
    rows = logs.query(
        f"SELECT policy, CASE WHEN would_verdict = 'deny' THEN coalesce({WHY}, '-') END, count(*) "
        "FROM decisions WHERE list_contains(?, policy) GROUP BY ALL",
        [names],
    )
    found = []
    for name in names:
        counts = [(why, count) for policy, why, count in rows if policy == name]
        reasons = _ranked((why, count) for why, count in counts if why is not None)
        found.append(DryRunPolicy(name, Rate(sum(reasons.values()), sum(n for _, n in counts)), reasons))
    return DryRunRates(found)


def denies_over_time(logs: DecisionLogs, start: datetime | None, end: datetime | None) -> DeniesOverTime:
    if start is None or end is None:
        return DeniesOverTime("day", [], {})
    bucket: Literal["day", "hour"] = "hour" if end - start < timedelta(days=2) else "day"
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    first = _truncate(start, bucket)
    starts = [first + step * index for index in range((_truncate(end, bucket) - first) // step + 1)]
    rows = logs.query(
        f"SELECT date_trunc('{bucket}', ts), coalesce(reason, '-'), count(*) FROM decisions "
        "WHERE verdict = 'deny' GROUP BY ALL"
    )
    index = {moment: position for position, moment in enumerate(starts)}
    counts: dict[str, list[int]] = {}
    for moment, reason, count in rows:
        counts.setdefault(reason, [0] * len(starts))[index[_aware(moment)]] = int(count)
    ranked = sorted(counts.items(), key=lambda item: (-sum(item[1]), item[0]))
    return DeniesOverTime(bucket, starts, dict(ranked))


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
