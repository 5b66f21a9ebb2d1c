"""The example policies (``policies/``) and their dates.

The examples are written as of one day, ``EXAMPLES_AS_OF``: that day their
break-glass exception is open, another one closed long before, and the
revocations and the dry-run rollout are days old. Whatever reads them at
another instant reads a copy moved there (``copy_examples``): the date of
every RFC 3339 date-time in the files shifted by the same whole number of
days, so that what was open is open, what had expired has, and every
interval stays as written. ``make demo`` serves such a copy, and so do
``authz lab policies`` (the compose demo) and the fuzz tests; tests that read
the files as they are pin the instant instead (``at:`` in a policy test,
``--at``, ``now=``).
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
from pathlib import Path

__all__ = ["EXAMPLES", "EXAMPLES_AS_OF", "copy_examples", "days_since_examples", "move_dates"]

EXAMPLES = Path(__file__).resolve().parents[2] / "policies"  # in a checkout (the image copies them elsewhere)
EXAMPLES_AS_OF = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
# The date of an RFC 3339 date-time (T, t or a space, seconds, an offset), as YAML reads one.
_DATE_TIME = re.compile(
    r"\b(\d{4}-\d{2}-\d{2})(?=[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})(?![\d:]))"
)
_DAY = datetime.timedelta(days=1)


def move_dates(text: str, days: int) -> str:
    """``text`` with every RFC 3339 date-time ``days`` later (earlier when
    negative): only its date changes; the time of day and the offset stay as
    written (a whole day later is the same time of day at any offset)."""
    delta = datetime.timedelta(days=days)

    def later(match: re.Match[str]) -> str:
        try:
            return (datetime.date.fromisoformat(match.group(1)) + delta).isoformat()
        except (ValueError, OverflowError):
            return match.group(1)  # not a date (2026-13-40): left for the loader to refuse

    return _DATE_TIME.sub(later, text)


def days_since_examples(at: datetime.datetime | None = None) -> int:
    """Whole days from ``EXAMPLES_AS_OF`` to ``at`` (default now), rounded down."""
    instant = at if at is not None else datetime.datetime.now(datetime.UTC)
    return (instant - EXAMPLES_AS_OF) // _DAY


def copy_examples(target: Path, *, source: Path = EXAMPLES, at: datetime.datetime | None = None) -> int:
    """Copy ``source`` (the examples) into ``target`` with their dates moved
    from ``EXAMPLES_AS_OF`` to ``at`` (default now); return the days moved.

    Names that start with a dot are left out, as policy discovery skips them.
    Each YAML file is written under a dot-name and renamed into place: an
    ``authz serve`` watching ``target`` never reads half a file."""
    days = days_since_examples(at)

    def copy(origin: str, destination: str) -> None:
        path = Path(destination)
        if path.suffix not in (".yaml", ".yml"):
            shutil.copy2(origin, destination)
            return
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(move_dates(Path(origin).read_text(encoding="utf-8"), days), encoding="utf-8")
        os.replace(partial, path)

    shutil.copytree(
        source, target, ignore=shutil.ignore_patterns(".*"), copy_function=copy, dirs_exist_ok=True
    )
    return days
