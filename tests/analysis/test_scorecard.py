"""Each scorecard metric on a hand-made log whose figures are worked out
by hand (tests/analysis/scorecard_data.py), and the exception half-life
from a real git repository built commit by commit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from authz.analysis.logs import DecisionLogs
from authz.analysis.metrics import DryRunPolicy, Rate, Scorecard
from authz.analysis.scorecard import compute
from authz.policy import load_paths
from authz.policy.history import revisions
from tests.analysis.scorecard_data import (
    ANALYTICS,
    EXPORTER,
    HISTORY,
    NOW,
    OLD_JOB,
    PARTNER,
    PAY,
    STRANGER,
    git_policy_repo,
    record,
    write_log,
    write_policies,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def scorecard(tmp_path: Path, records: list[dict[str, object]] | None = None) -> Scorecard:
    policies = write_policies(tmp_path / "policies")
    log = write_log(tmp_path / "d.jsonl", *([records] if records is not None else []))
    with DecisionLogs([str(log)]) as logs:
        return compute(logs, load_paths([policies]), [str(policies)], now=datetime.fromisoformat(NOW))


@pytest.fixture
def card(tmp_path: Path) -> Scorecard:
    return scorecard(tmp_path)


def test_the_period_and_identity_coverage(card: Scorecard) -> None:
    assert (card.start, card.end, card.checks, card.malformed) == (
        at("2026-11-10T00:00:00"), at("2026-11-23T10:00:00"), 17, 0,
    )  # fmt: skip
    assert card.identity_coverage.rate == Rate(15, 17)
    assert card.identity_coverage.unverified == {"INVALID_IDENTITY": 1, "NO_IDENTITY": 1}


def test_unknown_destinations_count_dry_run_would_denies_expired_exceptions_and_unknown_identities(
    card: Scorecard,
) -> None:
    unknown = card.unknown_destinations
    assert unknown.rate == Rate(5, 15)
    assert unknown.by_reason == {"NO_MATCHING_RULE": 3, "EXCEPTION_EXPIRED": 1, "UNKNOWN_IDENTITY": 1}
    assert unknown.top == [
        (PARTNER, "other.example:443", 2),
        (PAY, "evil.example:443", 1),
        (PAY, "scoring.example:443", 1),
        (STRANGER, "x.example:443", 1),
    ]


def test_first_seen_destinations_are_dated_by_their_first_appearance_in_all_the_logs(card: Scorecard) -> None:
    seen = {entry.identity: entry for entry in card.first_seen.identities}
    assert card.first_seen.recent_since == at("2026-11-16T10:00:00")
    assert set(seen) == {PAY, PARTNER, EXPORTER, OLD_JOB, STRANGER}  # not the unverified callers
    assert (seen[PAY].destinations, seen[PAY].recent) == (4, 3)  # kms.example.com is from 11-10
    assert seen[PAY].newest == [
        ("evil.example:443", at("2026-11-21T11:00:00")),
        ("scoring.example:443", at("2026-11-20T09:00:00")),
        ("bank.example.com:443", at("2026-11-20T08:00:00")),
    ]
    assert (seen[PARTNER].destinations, seen[PARTNER].recent) == (2, 2)
    assert card.first_seen.identities[0].identity == PAY  # most new destinations first


def test_exceptions_with_their_uses_and_their_state_at_report_time(card: Scorecard) -> None:
    exceptions = card.exceptions
    assert exceptions.open == 1
    found = {use.id: (use.state, use.uses, use.last_used, use.after_expiry) for use in exceptions.exceptions}
    assert found == {
        "backup-scoring": ("expired", 2, at("2026-11-21T10:00:00"), 1),
        "vendor-debug": ("open", 0, None, 0),
    }
    assert [use.id for use in exceptions.exceptions] == [
        "backup-scoring",
        "vendor-debug",
    ]  # soonest expiry first


def test_revocation_time_observed_never_observed_and_bounded_by_the_log_start(card: Scorecard) -> None:
    found = {
        revocation.identity: (revocation.elapsed, revocation.revoked_checks, revocation.upper_bound)
        for revocation in card.revocation_time.revocations
    }
    assert found == {
        EXPORTER: (timedelta(minutes=1), 2, False),  # the REVOKED before its `at` is not counted
        OLD_JOB: (timedelta(days=22, hours=9), 1, True),
        ANALYTICS: (None, 0, False),
    }


def test_dry_run_policies_and_their_would_deny_rate(card: Scorecard) -> None:
    assert card.dry_run.policies == [DryRunPolicy("partner-sync", Rate(2, 4), {"NO_MATCHING_RULE": 2})]


def test_denies_by_reason_per_day(card: Scorecard) -> None:
    denies = card.denies
    assert denies.bucket == "day"
    assert denies.starts[0] == at("2026-11-10T00:00:00")
    assert len(denies.starts) == 14  # every day of the period, the empty ones too
    nonzero = {
        reason: {denies.starts[index].day: n for index, n in enumerate(counts) if n}
        for reason, counts in denies.counts.items()
    }
    assert nonzero == {
        "REVOKED": {20: 3, 23: 1},
        "EXCEPTION_EXPIRED": {22: 1},
        "INVALID_IDENTITY": {22: 1},
        "NO_IDENTITY": {22: 1},
        "NO_MATCHING_RULE": {21: 1},
        "UNKNOWN_IDENTITY": {23: 1},
    }
    assert next(iter(denies.counts)) == "REVOKED"  # most denies first
    assert denies.total == 9


def test_under_two_days_denies_are_per_hour_and_dry_run_would_denies_are_not_denies(tmp_path: Path) -> None:
    card = scorecard(
        tmp_path,
        [
            record("2026-11-22T10:15:00Z", PAY, "evil.example", "deny", "NO_MATCHING_RULE"),
            record(
                "2026-11-22T10:45:00Z",
                PARTNER,
                "other.example",
                "allow",
                "DRY_RUN",
                dry_run_reason="NO_MATCHING_RULE",
                policy="partner-sync",
            ),
            record("2026-11-22T13:05:00Z", PAY, "evil.example", "deny", "NO_MATCHING_RULE"),
        ],
    )
    assert card.denies.bucket == "hour"
    assert [start.hour for start in card.denies.starts] == [10, 11, 12, 13]
    assert card.denies.counts == {"NO_MATCHING_RULE": [1, 0, 0, 1]}
    assert card.unknown_destinations.rate == Rate(3, 3)


def test_an_empty_log_has_no_rates_rather_than_zeros(tmp_path: Path) -> None:
    card = scorecard(tmp_path, [])
    assert (card.start, card.checks) == (None, 0)
    assert card.identity_coverage.rate.value is None
    assert card.unknown_destinations.rate.value is None
    assert card.first_seen.identities == []
    assert card.dry_run.policies == [DryRunPolicy("partner-sync", Rate(0, 0), {})]
    assert [r.first_revoked for r in card.revocation_time.revocations] == [None, None, None]
    assert (card.denies.starts, card.denies.total) == ([], 0)


def test_exception_half_life_from_the_policy_repositorys_history(tmp_path: Path) -> None:
    policies = git_policy_repo(tmp_path / "repo", HISTORY)
    log = write_log(tmp_path / "d.jsonl")
    with DecisionLogs([str(log)]) as logs:
        card = compute(logs, load_paths([policies]), [str(policies)], history=revisions([policies]))
    life = card.exception_half_life
    assert life.computed
    assert life.median == timedelta(days=5)  # the median of 2 and 8 days
    assert [(gone.id, gone.age, gone.ticket) for gone in life.removed] == [
        ("b", timedelta(days=8), "B-1"),
        ("a", timedelta(days=2), "A-1"),
    ]
    assert life.still_open == 1  # c


def test_without_history_the_half_life_is_not_computed(card: Scorecard) -> None:
    assert not card.exception_half_life.computed
    assert card.exception_half_life.median is None
