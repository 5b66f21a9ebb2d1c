"""``authz scorecard``: the monthly egress risk review from the decision
logs and the policy files (and, with ``--git``, the policy repository's history).
DuckDB and matplotlib are imported when the command runs: a second that
``authz serve`` and the other commands do not pay."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from authz.cli._args import EXIT_OK, EXIT_USAGE, timestamp

__all__ = ["register"]

_FORMATS = (".html", ".md")


def register(commands: Any) -> None:
    scorecard = commands.add_parser(
        "scorecard", help="the egress risk scorecard (Markdown on stdout, or --out report.html|report.md)"
    )
    scorecard.add_argument("--log", nargs="+", required=True, metavar="LOG", help="decision logs (globs too)")
    scorecard.add_argument("--policy", required=True, metavar="PATH", help="the policy files or directory")
    scorecard.add_argument(
        "--access-log",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="Envoy's access logs (authz envoy-config's JSON lines): the bytes by identity and destination",
    )
    scorecard.add_argument(
        "--git", action="store_true", help="read the policy repository's history (the exception half-life)"
    )
    scorecard.add_argument(
        "--at", type=timestamp, metavar="TIME",
        help="the report's instant (RFC 3339): the exceptions' state is judged there (default now)",
    )  # fmt: skip
    output = scorecard.add_mutually_exclusive_group()
    output.add_argument("--out", type=_out, metavar="FILE", help="write FILE.html (with plots) or FILE.md")
    output.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    scorecard.set_defaults(run=_scorecard)


def _out(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() not in _FORMATS:
        raise argparse.ArgumentTypeError(f"{text!r}: name a .html or .md file")
    return path


def _scorecard(args: argparse.Namespace) -> int:
    import duckdb

    from authz.analysis.access_log import AccessLogs
    from authz.analysis.logs import DecisionLogs, LogError
    from authz.analysis.report import to_html, to_json, to_markdown
    from authz.analysis.scorecard import compute
    from authz.policy import load_paths
    from authz.policy.history import HistoryError, revisions

    policy_set = load_paths([args.policy])
    try:
        history = revisions([args.policy]) if args.git else None
    except HistoryError as error:
        print(f"--git needs the policy repository's history: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with DecisionLogs(args.log) as logs:
            access = AccessLogs(args.access_log, logs) if args.access_log else None
            card = compute(logs, policy_set, [args.policy], history=history, access=access, now=args.at)
    except (LogError, duckdb.Error, OSError, EOFError) as error:
        print(f"cannot read the logs: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(to_json(card), indent=2))
    elif args.out is None:
        sys.stdout.write(to_markdown(card))
    else:
        render = to_html if args.out.suffix.lower() == ".html" else to_markdown
        args.out.write_text(render(card), encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return EXIT_OK
