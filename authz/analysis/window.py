"""The time window of a report (``--since``/``--until``): an RFC 3339 instant,
or a span back from now (``7d``, ``24h``), read once here for every command
that reads decision logs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["WindowError", "iso", "parse_duration", "parse_instant", "parse_window"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class WindowError(ValueError):
    """The text is neither an RFC 3339 instant nor a duration, or the window is empty."""


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``12h`` or ``7d``."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise WindowError(f"{text!r} is not a duration such as 7d, 12h, 15m or 90s")
    return timedelta(seconds=float(match[1]) * _UNITS[match[2]])


def parse_instant(text: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from RFC 3339 with an offset
    (``2026-11-02T10:00:00Z``, ``...+01:00``), or from a duration meaning
    that long before ``now`` (default the clock): ``7d`` is a week ago."""
    stripped = text.strip()
    if _DURATION.fullmatch(stripped):
        return (now or datetime.now(UTC)).astimezone(UTC) - parse_duration(stripped)
    try:
        value = datetime.fromisoformat(stripped.upper())  # RFC 3339 allows a lower-case t and z
    except ValueError:
        raise WindowError(
            f"{text!r} is neither an RFC 3339 time (2026-11-02T10:00:00Z) nor a duration (7d, 24h)"
        ) from None
    if value.tzinfo is None:
        raise WindowError(f"{text!r} has no offset: write it as ...Z or ...+01:00")
    return value.astimezone(UTC)


def parse_window(
    since: str | None, until: str | None, now: datetime | None = None
) -> tuple[datetime | None, datetime | None]:
    """The half-open window [since, until); either end may be open. One
    ``now`` serves both ends, so ``--since 2d --until 1d`` is one day long."""
    instant = now or datetime.now(UTC)
    start = parse_instant(since, instant) if since is not None else None
    end = parse_instant(until, instant) if until is not None else None
    if start is not None and end is not None and start >= end:
        raise WindowError(f"--since {since} is not before --until {until}: the window is empty")
    return start, end


def iso(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC to the millisecond, as the decision log writes it (a
    naive datetime, as DuckDB's ``ts``, is UTC already)."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
