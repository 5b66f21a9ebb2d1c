"""Figures for people: byte counts (``4.2 MiB`` in reports, ``10MB`` or ``1GiB`` on the command
line) and spans of time (``90 s``, ``3.5 days``)."""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["SizeError", "byte_size", "duration_text", "parse_size"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


class SizeError(ValueError):
    """Not a size such as 512, 10MB or 1GiB."""


def byte_size(count: int) -> str:
    """``0 B``, ``512 B``, ``1.5 KiB``, ``4.2 MiB``: binary units, one decimal above bytes."""
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{count:,} B" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """Bytes from ``512``, ``64KiB``, ``10MB`` (decimal: 10,000,000) or ``1GiB`` (binary)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise SizeError(f"{text!r} is not a size such as 512, 10MB or 1GiB")
    number, unit = float(match[1]), match[2].lower()
    prefix = unit[:1] if unit[:1] in "kmgtp" else ""
    if unit not in ("", "b") and not prefix:
        raise SizeError(f"{text!r} is not a size such as 512, 10MB or 1GiB")
    base = 1024 if "i" in unit else 1000
    return int(number * base ** _POWERS[prefix])


def duration_text(span: timedelta) -> str:
    """``45 s``, ``12 min``, ``5.5 h``, ``3.0 days``."""
    seconds = span.total_seconds()
    if abs(seconds) < 120:
        return f"{seconds:.0f} s"
    if abs(seconds) < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if abs(seconds) < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
