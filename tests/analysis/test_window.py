"""--since/--until: RFC 3339 instants and spans back from now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from authz.analysis.window import WindowError, iso, parse_duration, parse_instant, parse_window

NOW = datetime(2026, 11, 9, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-02T10:00:00Z", datetime(2026, 11, 2, 10, tzinfo=UTC)),
        ("2026-11-02t10:00:00z", datetime(2026, 11, 2, 10, tzinfo=UTC)),
        ("2026-11-02T11:30:00+01:30", datetime(2026, 11, 2, 10, tzinfo=UTC)),
        ("7d", NOW - timedelta(days=7)),
        ("24h", NOW - timedelta(hours=24)),
        ("1.5h", NOW - timedelta(minutes=90)),
        (" 90s ", NOW - timedelta(seconds=90)),
    ],
)
def test_instants_are_utc(text: str, expected: datetime) -> None:
    parsed = parse_instant(text, NOW)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text", ["yesterday", "2026-11-02T10:00:00", "7 days", "-7d", "", "2026-13-01T00:00:00Z"]
)
def test_anything_else_is_refused_saying_which_forms_are_read(text: str) -> None:
    with pytest.raises(WindowError, match=r"RFC 3339|offset"):
        parse_instant(text, NOW)


def test_durations() -> None:
    assert parse_duration("15m") == timedelta(minutes=15)
    with pytest.raises(WindowError, match="not a duration such as 7d"):
        parse_duration("15 minutes")


def test_a_window_shares_one_now_and_must_not_be_empty() -> None:
    assert parse_window("2d", "1d", NOW) == (NOW - timedelta(days=2), NOW - timedelta(days=1))
    assert parse_window(None, "2026-11-03T00:00:00Z", NOW) == (None, datetime(2026, 11, 3, tzinfo=UTC))
    assert parse_window(None, None, NOW) == (None, None)
    with pytest.raises(WindowError, match="is not before --until"):
        parse_window("1d", "2d", NOW)


def test_iso_writes_utc_to_the_millisecond_as_the_decision_log() -> None:
    assert iso(datetime(2026, 11, 2, 10, 0, 0, 123_456)) == "2026-11-02T10:00:00.123Z"
    assert (
        iso(datetime(2026, 11, 2, 11, 0, tzinfo=timezone(timedelta(hours=1)))) == "2026-11-02T10:00:00.000Z"
    )
    assert iso(None) is None
