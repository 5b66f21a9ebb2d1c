"""The scorecard's metrics as data: each a dataclass with its title and
the one-sentence definition it is computed by (authz/analysis/scorecard.py
computes them; the reports show each figure beside its definition)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from authz.analysis.access_log import AccessLogSummary

__all__ = [
    "BytesByIdentity",
    "BytesToUnapproved",
    "DeniesOverTime",
    "DestinationBytes",
    "DryRunPolicy",
    "DryRunRates",
    "ExceptionHalfLife",
    "ExceptionUse",
    "ExceptionsOpen",
    "FirstSeen",
    "IdentityBytes",
    "IdentityCoverage",
    "IdentityFirstSeen",
    "Rate",
    "RemovedException",
    "RevocationTime",
    "RevocationTimes",
    "Scorecard",
    "UnknownDestinations",
]


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
        "(under dry-run, the reason it would have been denied for) is neither NO_IDENTITY nor "
        "INVALID_IDENTITY."
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
        "(ALLOWED_BY_EXCEPTION) and those it would have allowed but had expired (EXCEPTION_EXPIRED) in the "
        "logs."
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
        "revoked) to the first REVOKED decision naming it at or after then; never observed when the logs "
        "hold none."
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
class IdentityBytes:
    identity: str | None  # None: checks without an identity
    bytes_out: int
    bytes_in: int
    checks: int  # all its checks


@dataclass(frozen=True, slots=True)
class BytesByIdentity:
    TITLE: ClassVar[str] = "Top identities by bytes out"
    DEFINITION: ClassVar[str] = (
        "Per identity, the bytes the gateway sent to destinations for it (bytes out) and received from them "
        "(bytes in): Envoy's upstream byte counts from its access log, joined to the checks by decision id, "
        "the ten identities with the most bytes out. A denied check sends nothing."
    )
    computed: bool  # False without --access-log
    total_out: int = 0
    total_in: int = 0
    identities: list[IdentityBytes] = field(default_factory=list)  # most bytes out first


@dataclass(frozen=True, slots=True)
class DestinationBytes:
    destination: str  # host:port
    bytes_out: int
    bytes_in: int
    checks: int
    identities: int  # distinct callers


@dataclass(frozen=True, slots=True)
class BytesToUnapproved:
    TITLE: ClassVar[str] = "Destinations no policy maps, by bytes received"
    DEFINITION: ClassVar[str] = (
        "Per destination (host:port), the bytes sent to it on checks whose destination no rule and no live "
        "exception approved for a verified caller (the unknown destination rate's checks), the ten that "
        "received the most. Only dry-run lets such a check through: under enforcement this is empty."
    )
    computed: bool  # False without --access-log
    total_out: int = 0
    destinations: list[DestinationBytes] = field(default_factory=list)  # most bytes out first


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
    bytes_by_identity: BytesByIdentity = field(default_factory=lambda: BytesByIdentity(computed=False))
    bytes_to_unapproved: BytesToUnapproved = field(default_factory=lambda: BytesToUnapproved(computed=False))
    access: AccessLogSummary | None = None  # with --access-log

    METRICS: ClassVar[tuple[str, ...]] = (
        "identity_coverage",
        "unknown_destinations",
        "first_seen",
        "exceptions",
        "exception_half_life",
        "revocation_time",
        "dry_run",
        "denies",
        "bytes_by_identity",
        "bytes_to_unapproved",
    )
