"""The example policies' dates: a copy moved to any instant reads there as the
files read on the examples' own date (authz/gateway/examples.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from authz.gateway.examples import EXAMPLES, EXAMPLES_AS_OF, copy_examples, days_since_examples, move_dates
from authz.policy import load_paths
from authz.policy.compile import CompileOptions, load_policy
from authz.policy.exceptions import exception_report
from authz.policy.testcases import run_tests

NOW = datetime.now(UTC)
# Today, a year ahead, three years ahead, and the day before the examples' own date.
INSTANTS = [
    NOW,
    NOW + timedelta(days=365),
    NOW + timedelta(days=3 * 365 + 1),
    EXAMPLES_AS_OF - timedelta(hours=1),
]


def test_only_the_date_of_a_date_time_moves() -> None:
    text = (
        "expires: 2026-12-05T18:00:00Z\n"
        "at: '2026-11-20T09:12:00.250+01:00'  # quoted, a fraction, an offset\n"
        "since: 2026-02-28 23:30:00-05:00\n"
        "day: 2026-12-05  # a date alone is no instant\n"
        "not: 2026-12-05T18:00Z, 2026-12-05T18:00:00, 2026-13-40T00:00:00Z\n"
    )
    assert move_dates(text, 365) == (
        "expires: 2027-12-05T18:00:00Z\n"
        "at: '2027-11-20T09:12:00.250+01:00'  # quoted, a fraction, an offset\n"
        "since: 2027-02-28 23:30:00-05:00\n"
        "day: 2026-12-05  # a date alone is no instant\n"
        "not: 2026-12-05T18:00Z, 2026-12-05T18:00:00, 2026-13-40T00:00:00Z\n"
    )
    assert move_dates(move_dates(text, 1096), -1096) == text


def test_the_days_are_whole_days_since_the_examples_date() -> None:
    assert days_since_examples(EXAMPLES_AS_OF) == 0
    assert days_since_examples(EXAMPLES_AS_OF + timedelta(days=1, seconds=-1)) == 0
    assert days_since_examples(EXAMPLES_AS_OF + timedelta(days=365, hours=5)) == 365
    assert days_since_examples(EXAMPLES_AS_OF - timedelta(seconds=1)) == -1


@pytest.mark.parametrize("at", INSTANTS, ids=["now", "a-year-ahead", "three-years-ahead", "before"])
def test_moved_to_any_instant_the_examples_read_as_on_their_date(tmp_path: Path, at: datetime) -> None:
    """Loaded and compiled at ``at`` (no exception beyond its maximum lifetime), the
    examples' own policy tests pass there, one exception is open and the other expired."""
    days = copy_examples(tmp_path, at=at)
    assert days == days_since_examples(at)
    policy_set, compiled = load_policy([tmp_path], CompileOptions(now=at.timestamp()))
    results = run_tests(compiled, policy_set, now=at.timestamp())
    assert [result.name for result in results if not result.passed] == []
    assert len(results) == sum(len(loaded.model.spec.cases) for loaded in load_paths([EXAMPLES]).tests)
    states = {status.id: status.state for status in exception_report(policy_set, at.timestamp(), 86400.0)}
    assert states == {"backup-fraud-scoring": "open", "bank-cutover": "expired"}


def test_the_copy_is_the_examples_with_only_their_dates_moved(tmp_path: Path) -> None:
    copy_examples(tmp_path, at=EXAMPLES_AS_OF + timedelta(days=400))
    written = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    assert written == sorted(path.relative_to(EXAMPLES) for path in EXAMPLES.rglob("*"))
    for name in written:
        if (EXAMPLES / name).is_file():
            assert (tmp_path / name).read_text() == move_dates((EXAMPLES / name).read_text(), 400)
    assert "expires: 2028-01-09T18:00:00Z" in (tmp_path / "payments-api.yaml").read_text()


def test_the_examples_as_they_are_date_from_the_examples_date() -> None:
    """On the examples' date the exception is open, and it would be refused beyond the
    maximum lifetime: the files are consistent as of then, which is what the moves keep."""
    policy_set, compiled = load_policy([EXAMPLES], CompileOptions(now=EXAMPLES_AS_OF.timestamp()))
    results = run_tests(compiled, policy_set, now=EXAMPLES_AS_OF.timestamp())
    assert all(result.passed for result in results)
    states = {s.id: s.state for s in exception_report(policy_set, EXAMPLES_AS_OF.timestamp(), 7 * 86400.0)}
    assert states == {"backup-fraud-scoring": "expiring", "bank-cutover": "expired"}
