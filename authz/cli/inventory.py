"""``authz inventory``: what each workload identity reached, from the
decision logs; the bytes from Envoy's access log (``--access-log``); the
flows that rose against a baseline (``--compare-to``, ``--baseline-window``);
the flow map (``--graph``) and draft policies (``--propose``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from authz.analysis.window import WindowError, parse_window
from authz.cli._args import EXIT_OK, EXIT_USAGE, count, duration, factor, size
from authz.policy import load_policy

if TYPE_CHECKING:
    from authz.analysis.inventory import Inventory
    from authz.analysis.logs import DecisionLogs

__all__ = ["register"]

_GRAPH_SUFFIXES = (".svg", ".png", ".pdf")


def register(commands: Any) -> None:
    inventory = commands.add_parser(
        "inventory",
        help="what each identity reached, from decision logs (flow map, draft policies)",
        description="Per identity, the destinations in the decision logs: counts, first and last seen, verdicts"
        " and reasons, HTTP methods and path prefixes; unknown destinations marked. With --policy, the rules"
        " the logs never used and the identities on one side only. With --access-log, the bytes each flow"
        " moved (Envoy's access log); with --compare-to or --baseline-window, the flows that rose against a"
        " baseline and the protocols new to a pair.",
    )
    inventory.add_argument(
        "logs",
        nargs="+",
        metavar="LOG",
        help="decision logs: files or globs (PATH.1, PATH.worker1, .gz, .parquet)",
    )
    inventory.add_argument(
        "--policy",
        action="append",
        metavar="PATH",
        help="policy files or directories: unknown means not in them; list unused rules, unseen identities",
    )
    when = "RFC 3339 (2026-11-02T00:00:00Z) or a span back from now (7d, 24h)"
    inventory.add_argument("--since", metavar="TIME", help=f"records from this instant on: {when}")
    inventory.add_argument("--until", metavar="TIME", help=f"records before this instant: {when}")
    inventory.add_argument(
        "--access-log",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATH",
        help="Envoy's access logs (authz envoy-config's JSON lines; globs, .gz): bytes out and in per flow",
    )
    baseline = inventory.add_mutually_exclusive_group()
    baseline.add_argument(
        "--compare-to",
        nargs="+",
        action="extend",
        metavar="LOG",
        help="baseline decision logs: list the flows that rose since, and protocols new to a pair",
    )
    baseline.add_argument(
        "--baseline-window",
        type=duration,
        metavar="SPAN",
        help="the baseline is this span (7d) just before --since, in the same logs",
    )
    inventory.add_argument(
        "--factor",
        type=factor,
        default=3.0,
        help="a flow rose when its requests or bytes are this many times the scaled baseline (default 3)",
    )
    inventory.add_argument(
        "--min-requests",
        type=count,
        default=10,
        metavar="N",
        help="a rise in requests counts from this many requests now (default %(default)s)",
    )
    inventory.add_argument(
        "--min-bytes",
        type=size,
        default=1 << 20,
        metavar="SIZE",
        help="a rise in bytes counts from this many bytes now (default 1MiB; 10MB, 1GiB)",
    )
    output = inventory.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object (keys: see the README)")
    output.add_argument("--markdown", action="store_true", help="print Markdown")
    inventory.add_argument(
        "--graph", type=Path, metavar="FILE", help="draw the flow map: flows.svg, .png or .pdf"
    )
    inventory.add_argument(
        "--by",
        choices=("records", "bytes"),
        default="records",
        help="the flow map's edge width and busiest pairs: by records, or bytes (needs --access-log)",
    )
    inventory.add_argument(
        "--graph-edges",
        type=count,
        default=80,
        metavar="N",
        help="busiest pairs drawn (default %(default)s)",
    )
    inventory.add_argument(
        "--propose", type=Path, metavar="DIR", help="write one draft EgressPolicy an identity into DIR"
    )
    inventory.add_argument("--force", action="store_true", help="with --propose: overwrite existing drafts")
    inventory.add_argument(
        "--wildcard-min-hosts",
        type=count,
        default=5,
        metavar="N",
        help="with --propose: sibling hosts it takes to propose *.parent (default %(default)s)",
    )
    inventory.set_defaults(run=_inventory)


def _inventory(args: argparse.Namespace) -> int:
    try:
        since, until = parse_window(args.since, args.until)
    except WindowError as exc:
        return _usage(str(exc))
    if args.graph is not None and args.graph.suffix.lower() not in _GRAPH_SUFFIXES:
        return _usage(f"--graph {args.graph}: the flow map is drawn as {', '.join(_GRAPH_SUFFIXES)}")
    if args.by == "bytes" and not args.access_log:
        return _usage("--by bytes needs the bytes: pass --access-log")
    baseline = None
    if args.baseline_window is not None:
        if since is None:
            return _usage("--baseline-window needs --since: the baseline is the span just before it")
        baseline = (since - timedelta(seconds=args.baseline_window), since)
    # The policy before DuckDB is imported: loading freezes the objects alive then (gc.freeze), and
    # DuckDB's own, frozen, would be reported as leaked by its binding when the process exits.
    policy = load_policy(args.policy) if args.policy else None

    import duckdb

    from authz.analysis.access_log import AccessLogs
    from authz.analysis.inventory import take_inventory
    from authz.analysis.inventory_report import render_markdown, render_text
    from authz.analysis.logs import DecisionLogs, LogError

    try:
        with DecisionLogs(args.logs, since=since, until=until) as logs:
            access = AccessLogs(args.access_log, logs) if args.access_log else None
            inventory = take_inventory(logs, policy, access=access, baseline=baseline)
            inventory = _compare(args, logs, inventory, baseline)
    except LogError as exc:
        return _usage(str(exc))
    except (duckdb.Error, OSError, EOFError) as exc:  # a file unreadable, or cut off mid-gzip
        return _usage(f"cannot read the logs: {exc}")
    if args.json:
        print(json.dumps(inventory.to_dict(), indent=2))
    else:
        print(render_markdown(inventory) if args.markdown else render_text(inventory), end="")
    code = EXIT_OK
    if args.graph is not None:
        code = max(code, _graph(inventory, args.graph, args.graph_edges, args.by))
    if args.propose is not None:
        code = max(code, _propose(inventory, args.propose, args.force, args.wildcard_min_hosts))
    return code


def _compare(
    args: argparse.Namespace,
    logs: DecisionLogs,
    inventory: Inventory,
    baseline: tuple[datetime, datetime] | None,
) -> Inventory:
    """The inventory with its comparison against the baseline asked for, if any."""
    from authz.analysis.change import against_logs, against_window
    from authz.analysis.compare import Thresholds

    thresholds = Thresholds(args.factor, args.min_requests, args.min_bytes)
    if baseline is not None:
        comparison = against_window(logs, inventory, baseline, thresholds)
    elif args.compare_to:
        comparison = against_logs(logs, inventory, args.compare_to, args.access_log, thresholds)
    else:
        return inventory
    return dataclasses.replace(inventory, comparison=comparison)


def _graph(inventory: Inventory, path: Path, edges: int, by: str) -> int:
    from authz.analysis.flowmap import GraphError, write_flow_map
    from authz.analysis.units import byte_size

    try:
        drawn = write_flow_map(inventory, path, edges, "bytes" if by == "bytes" else "records")
    except (GraphError, OSError) as exc:
        return _usage(str(exc))
    cut = ""
    if drawn.edges < drawn.total:
        moved = f", {byte_size(drawn.bytes_left_out)}" if by == "bytes" else ""
        cut = f"; {drawn.total - drawn.edges:,} pairs ({drawn.records_left_out:,} records{moved}) left out"
    print(
        f"flow map: {path} ({drawn.edges:,} of {drawn.total:,} identity-destination pairs{cut})",
        file=sys.stderr,
    )
    return EXIT_OK


def _propose(inventory: Inventory, directory: Path, force: bool, wildcard_min_hosts: int) -> int:
    from authz.analysis.inventory_report import counted
    from authz.analysis.propose import ProposeError, propose, write_drafts

    drafts, skipped = propose(inventory, wildcard_min_hosts=wildcard_min_hosts)
    try:
        paths = write_drafts(drafts, directory, force=force)
    except (ProposeError, OSError) as exc:
        return _usage(str(exc))
    print(f"proposed {counted(len(paths), 'draft')} in {directory}:", file=sys.stderr)
    for draft, path in zip(drafts, paths, strict=True):
        wildcards = sum(1 for rule in draft.rules if rule.siblings)
        extra = f", {counted(wildcards, 'wildcard')} to review" if wildcards else ""
        left = f", {counted(len(draft.left_out), 'destination')} left out" if draft.left_out else ""
        print(f"  {path}: {counted(len(draft.rules), 'rule')}{extra}{left}", file=sys.stderr)
    for line in skipped:
        print(f"  no draft: {line}", file=sys.stderr)
    print(
        "never proposed: destinations only a guard (METADATA_ENDPOINT, SNI_HOST_MISMATCH, INVALID_*, REVOKED)"
        " or the server denied; each draft's header lists them",
        file=sys.stderr,
    )
    print(f"next: fill each TODO (owner, change_ref, purpose), then authz check {directory}", file=sys.stderr)
    return EXIT_OK


def _usage(message: str) -> int:
    print(f"authz inventory: error: {message}", file=sys.stderr)
    return EXIT_USAGE
