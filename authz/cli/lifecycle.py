"""The operations that keep egress control alive in an organisation:
``revoke`` (one-step revoke, quarantine and containment) and ``exceptions``
(what break-glass grants are open, and until when)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from authz.cli._args import EXIT_FAILED, EXIT_OK, destination, duration, timestamp
from authz.policy.compile import DEFAULT_MAX_EXCEPTION_DAYS, CompileOptions, load_policy
from authz.policy.exceptions import exception_report
from authz.policy.revocations import RevocationEdit, add_revocation, lift_revocation, list_revocations

__all__ = ["register"]


def register(commands: Any) -> None:
    revoke = commands.add_parser(
        "revoke",
        help="revoke, contain or reinstate an identity (edits an EgressRevocation file)",
        description="Edit the EgressRevocation file PATH (created if missing), keeping its comments and order."
        " Running authz processes apply the change at their next reload.",
    )
    revoke.add_argument(
        "path", type=Path, metavar="PATH", help="the revocation file, e.g. policies/revocations.yaml"
    )
    action = revoke.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--identity", metavar="SPIFFE_ID", help="revoke this ID, or a namespace as .../ns/NAME/*"
    )
    action.add_argument("--lift", metavar="SPIFFE_ID", help="remove the revocation of this ID or pattern")
    action.add_argument("--list", action="store_true", help="show the revocations")
    revoke.add_argument("--reason", help="why (required with --identity)")
    revoke.add_argument("--by", help="who revokes (required with --identity)")
    revoke.add_argument("--ticket", help="the incident or change ticket")
    revoke.add_argument("--at", type=timestamp, metavar="TIME", help="when (RFC 3339; default now)")
    revoke.add_argument(
        "--allow-only",
        type=destination,
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="contain rather than cut off: still allow this destination (repeatable)",
    )
    revoke.add_argument("--json", action="store_true", help="with --list: print JSON")
    revoke.set_defaults(run=_revoke)

    exceptions = commands.add_parser(
        "exceptions", help="list break-glass exceptions, their owners and expiry"
    )
    exceptions.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    exceptions.add_argument(
        "--expiring-within",
        type=duration,
        default=duration("7d"),
        metavar="DURATION",
        help="flag exceptions with less time left than this (default 7d)",
    )
    exceptions.add_argument("--fail-on-expired", action="store_true", help="exit 1 when any has expired (CI)")
    exceptions.add_argument(
        "--max-exception-days", type=float, default=DEFAULT_MAX_EXCEPTION_DAYS, metavar="DAYS",
        help="longest a break-glass exception may stay open (default %(default)g)",
    )  # fmt: skip
    exceptions.add_argument("--json", action="store_true", help="print a JSON list")
    exceptions.set_defaults(run=_exceptions)


def _revoke(args: argparse.Namespace) -> int:
    if args.list:
        entries = list_revocations(args.path)
        if args.json:
            print(json.dumps([entry.model_dump(mode="json") for entry in entries], indent=2))
            return EXIT_OK
        for entry in entries:
            contained = ""
            if entry.allow_only:
                allowed = ", ".join(f"{h}:{p[0]}" for d in entry.allow_only for h in d.hosts for p in d.ports)
                contained = f"  contained to {allowed}"
            print(
                f"{entry.identity}  by {entry.by} at {entry.at.isoformat()}  {entry.ticket or '-'}: {entry.reason}{contained}"
            )
        print(f"{len(entries)} revoked", file=sys.stderr)
        return EXIT_OK
    if args.lift:
        lifted = lift_revocation(args.path, args.lift)
        print(f"lifted {lifted['identity']} in {args.path}; authz applies it at its next reload")
        return EXIT_OK
    missing = [flag for flag, value in (("--reason", args.reason), ("--by", args.by)) if not value]
    if missing:
        raise SystemExit(f"authz revoke: --identity needs {' and '.join(missing)}")
    edit = RevocationEdit(args.identity, args.reason, args.by, args.ticket, args.at, tuple(args.allow_only))
    written = add_revocation(args.path, edit)
    what = "contained" if args.allow_only else "revoked"
    print(
        f"{what} {written['identity']} in {args.path} at {written['at']}; authz applies it at its next reload"
    )
    return EXIT_OK


def _exceptions(args: argparse.Namespace) -> int:
    policy_set, _ = load_policy(args.paths, CompileOptions(max_exception_days=args.max_exception_days))
    report = exception_report(policy_set, time.time(), args.expiring_within)
    if args.json:
        print(json.dumps([status.to_dict() for status in report], indent=2))
    else:
        header = ("POLICY", "EXCEPTION", "OWNER", "TICKET", "EXPIRES", "LEFT", "STATE")
        rows = [header] + [
            (s.policy, s.id, s.owner, s.ticket, s.expires, _left(s.seconds_left), s.state.upper())
            for s in report
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        states = [status.state for status in report]
        print(
            f"{len(report)} exceptions: {states.count('expired')} expired,"
            f" {states.count('expiring')} expiring within {_left(args.expiring_within)}",
            file=sys.stderr,
        )
    expired = any(status.state == "expired" for status in report)
    return EXIT_FAILED if expired and args.fail_on_expired else EXIT_OK


def _left(seconds: float) -> str:
    if seconds <= 0:
        return "expired"
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h" if days else f"{hours}h {rest // 60}m"
