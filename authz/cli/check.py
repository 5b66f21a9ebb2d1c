"""``authz check``: validate and lint policy files. Warnings never change
the exit status unless ``--strict``; ``--silenced`` lists what reviewers
have accepted, and why. Git history and decision logs are gathered here
(the policy layer reads no logs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from authz.cli._args import EXIT_FAILED, EXIT_OK, EXIT_USAGE, compile_options, count, max_exception_days
from authz.core.decision import Mode
from authz.policy import PolicyError, PolicySet, load_policy
from authz.policy.history import HistoryError, Revision, revisions
from authz.policy.lint import (
    DEFAULT_MAX_DRY_RUN_DAYS,
    DEFAULT_MAX_IDENTITIES_PER_DESTINATION,
    LintOptions,
    LintReport,
    RuleUsage,
    lint,
)

__all__ = ["register"]

DEFAULT_UNUSED_DAYS = 30.0


def _days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 36500:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (more than 0)")
    return value


def register(commands: Any) -> None:
    check = commands.add_parser(
        "check", help="validate and lint policy files (exit 1 on errors; with --strict, on warnings too)"
    )
    check.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    max_exception_days(check)
    check.add_argument("--strict", action="store_true", help="exit 1 when a warning is not silenced")
    check.add_argument(
        "--silenced", action="store_true", help="list every lint silence: where, what, how many, and why"
    )
    check.add_argument(
        "--max-dry-run-days",
        type=_days,
        default=DEFAULT_MAX_DRY_RUN_DAYS,
        metavar="DAYS",
        help="longest a policy may stay in dry-run, from metadata.since or git (default %(default)g)",
    )
    check.add_argument(
        "--max-identities-per-destination",
        type=count,
        default=DEFAULT_MAX_IDENTITIES_PER_DESTINATION,
        metavar="N",
        help="identities one host:port may be allowed for before SHARED_DESTINATION (default %(default)d)",
    )
    check.add_argument(
        "--log", nargs="+", metavar="LOG", help="decision logs (globs, rotations): warn on unused rules"
    )
    check.add_argument(
        "--unused-days",
        type=_days,
        metavar="DAYS",
        help=f"with --log: a rule no decision named in the log's last DAYS is unused (default {DEFAULT_UNUSED_DAYS:g})",
    )
    check.set_defaults(run=_check, policy_error_exit=EXIT_FAILED)


def _check(args: argparse.Namespace) -> int:
    if args.unused_days is not None and not args.log:
        print("authz check: --unused-days needs --log", file=sys.stderr)
        return EXIT_USAGE
    policy_set, compiled = load_policy(args.paths, compile_options(args))
    notes: list[str] = []
    usage = None
    if args.log:
        from authz.analysis.logs import LogError  # DuckDB: imported by the commands that read logs only

        try:
            usage = _usage(args.log, args.unused_days or DEFAULT_UNUSED_DAYS, notes)
        except LogError as exc:
            print(f"authz check: {exc}", file=sys.stderr)
            return EXIT_USAGE
    options = LintOptions(
        max_exception_days=args.max_exception_days,
        max_dry_run_days=args.max_dry_run_days,
        max_identities_per_destination=args.max_identities_per_destination,
        history=_history(args.paths, policy_set, notes),
        usage=usage,
    )
    report = lint(policy_set, options)
    if report.errors:
        raise PolicyError(report.errors)
    for warning in report.warnings:
        print(warning, file=sys.stderr)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if args.silenced:
        _print_silences(report)
    failed = args.strict and bool(report.warnings)
    rules = sum(len(service.rules) for service in compiled.services)
    exceptions = sum(len(loaded.model.spec.exceptions) for loaded in policy_set.policies)
    revoked = sum(len(loaded.model.spec.revoked) for loaded in policy_set.revocations)
    print(
        f"{'failed' if failed else 'ok'}: {len(compiled.services)} policies, {rules} rules, {exceptions} exceptions,"
        f" {revoked} revocations, {len(policy_set.tests)} test files, {len(report.warnings)} warnings,"
        f" {len(report.silenced)} silenced; version {compiled.version}"
    )
    if failed:
        print(
            f"authz check --strict: {len(report.warnings)} warnings not silenced (fix them, or silence each with"
            ' lint: {ignore: [CODE], reason: "..."})',
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _history(paths: Sequence[str], policy_set: PolicySet, notes: list[str]) -> list[Revision] | None:
    """The files' git history, read only when a date is wanted from it: a
    dry-run policy without ``metadata.since``, or an exception."""
    wanted = any(
        (loaded.model.spec.mode == Mode.DRY_RUN and loaded.model.metadata.since is None)
        or loaded.model.spec.exceptions
        for loaded in policy_set.policies
    )
    if not wanted:
        return None
    try:
        return revisions(paths)
    except HistoryError as exc:
        notes.append(
            f"no git history ({exc}): dry-run ages come from metadata.since only, and exceptions' lifetimes"
            " are counted from now only (as in compile)"
        )
        return None


def _usage(patterns: Sequence[str], days: float, notes: list[str]) -> RuleUsage | None:
    """What the log's last ``days`` used, its newest record standing for now
    (an old log is judged as of its own end); None when it spans less."""
    from authz.analysis.logs import DecisionLogs

    with DecisionLogs(patterns) as logs:
        ((first, last),) = logs.query("SELECT min(ts), max(ts) FROM decisions")
        if first is None or last - first < timedelta(days=days):
            span = "no decisions" if first is None else f"{(last - first).total_seconds() / 86400:.1f} days"
            notes.append(f"the log spans {span}, less than --unused-days {days:g}: unused rules not checked")
            return None
        start = last - timedelta(days=days)
        rows = logs.query(
            "SELECT DISTINCT policy, rule, exception FROM decisions WHERE ts >= ? AND policy IS NOT NULL",
            [start],
        )
    used = frozenset((policy, named) for policy, *ids in rows for named in ids if named is not None)
    return RuleUsage(used, start, last)


def _print_silences(report: LintReport) -> None:
    if not report.silences:
        print("no silences")
        return
    rows = [("WHERE", "SILENCES", "CODES (warnings silenced)", "REASON")]
    for use in report.silences:
        silence = use.silence
        codes = ", ".join(
            f"{code} (stale)"
            if code in use.stale
            else f"{code} (pending)"
            if code in use.pending
            else f"{code} ({use.silenced.get(code, 0)})"
            for code in silence.codes
        )
        rows.append((f"{silence.file}:{silence.line}", silence.target, codes, silence.reason))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
        )
