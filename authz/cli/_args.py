"""Argument types and exit codes shared by the commands."""

from __future__ import annotations

import argparse
import datetime

from authz.analysis.units import SizeError, parse_size
from authz.analysis.window import WindowError, parse_duration
from authz.core.decision import Mode
from authz.core.destination import InvalidHost, split_authority
from authz.policy.compile import DEFAULT_MAX_EXCEPTION_DAYS, CompileOptions

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "compile_options",
    "count",
    "destination",
    "duration",
    "factor",
    "max_exception_days",
    "port",
    "size",
    "timestamp",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def count(text: str) -> int:
    """A whole number of 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (1 or more)")
    return int(text)


def size(text: str) -> int:
    """Bytes from ``512``, ``10MB`` or ``1GiB``."""
    try:
        return parse_size(text)
    except SizeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def factor(text: str) -> float:
    """A number above 1: ``3``, ``1.5``."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a factor above 1 (3, 1.5)")
    return value


def port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)


def timestamp(text: str) -> datetime.datetime:
    """RFC 3339 with an offset: 2026-12-01T00:00:00Z."""
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an RFC 3339 time (2026-12-01T00:00:00Z)") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no offset: write it as ...Z or ...+01:00")
    return value


def duration(text: str) -> float:
    """Seconds from ``90s``, ``15m``, ``12h`` or ``7d``."""
    try:
        return parse_duration(text).total_seconds()
    except WindowError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def destination(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets)."""
    try:
        host, found = split_authority(text)
    except InvalidHost as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a port: HOST:PORT")
    return host.strip("[]"), found


def max_exception_days(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-exception-days",
        type=float,
        default=DEFAULT_MAX_EXCEPTION_DAYS,
        metavar="DAYS",
        help="longest a break-glass exception may stay open, from now (default %(default)g)",
    )


def compile_options(args: argparse.Namespace) -> CompileOptions:
    return CompileOptions(
        mode=Mode(getattr(args, "mode", "enforce")), max_exception_days=args.max_exception_days
    )
