"""Figures for people: byte counts (``4.2 MiB`` in reports)."""

from __future__ import annotations

__all__ = ["byte_size"]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def byte_size(count: int) -> str:
    """``0 B``, ``512 B``, ``1.5 KiB``, ``4.2 MiB``: binary units, one decimal above bytes."""
    value = float(count)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{count:,} B" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
