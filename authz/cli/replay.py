"""``authz replay``: what a policy change would deny, on the traffic of the
decision log; ``--fail-on-new-deny`` makes it a CI gate for policy pull requests.
DuckDB is imported when the command runs, not with the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from authz.analysis.window import WindowError, iso, parse_window
from authz.cli._args import EXIT_FAILED, EXIT_OK, EXIT_USAGE, count, timestamp
from authz.policy import load_policy
from authz.policy.compile import DEFAULT_MAX_EXCEPTION_DAYS, CompileOptions

if TYPE_CHECKING:
    from authz.analysis.replay import Change, Flow, Replay

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "replay",
        help="decide the logged requests again under a proposed policy set: what would it deny?",
        description="Re-evaluates each logged request against --policy and reports the requests whose"
        " verdict changes, allowed-to-denied first, against the log's own verdicts or a --baseline set.",
    )
    parser.add_argument("--log", nargs="+", required=True, metavar="LOG", help="decision logs (globs too)")
    parser.add_argument("--policy", nargs="+", required=True, metavar="PATH", help="the proposed policy set")
    parser.add_argument(
        "--baseline",
        nargs="+",
        metavar="PATH",
        help="decide the old set too (default: the log's own verdicts)",
    )
    parser.add_argument(
        "--fail-on-new-deny", action="store_true", help="exit 1 when any logged request would be newly denied"
    )
    when = "RFC 3339 (2026-11-02T00:00:00Z) or a span back from now (7d, 24h)"
    parser.add_argument("--since", metavar="TIME", help=f"only records from this instant on: {when}")
    parser.add_argument("--until", metavar="TIME", help=f"only records before this instant: {when}")
    parser.add_argument(
        "--at", type=timestamp, help="judge exceptions and revocations as of this time (default: now)"
    )
    parser.add_argument(
        "--samples", type=count, default=3, metavar="N", help="sample requests a flow (default 3)"
    )
    parser.add_argument(
        "--top", type=int, default=50, metavar="N",
        help="flows shown each way, largest first (default %(default)s; 0: all); the counts cover all",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--max-exception-days", type=float, default=DEFAULT_MAX_EXCEPTION_DAYS, metavar="DAYS",
        help="as for authz check (default %(default)g)",
    )  # fmt: skip
    parser.set_defaults(run=_run, policy_error_exit=EXIT_USAGE)


def _run(args: argparse.Namespace) -> int:
    if args.top < 0:
        print("authz replay: --top is 0 (all) or more", file=sys.stderr)
        return EXIT_USAGE
    import duckdb

    from authz.analysis.logs import DecisionLogs, LogError
    from authz.analysis.replay import replay

    at = args.at.timestamp() if args.at is not None else time.time()
    try:
        since, until = parse_window(args.since, args.until)
    except WindowError as error:
        print(f"authz replay: {error}", file=sys.stderr)
        return EXIT_USAGE
    options = CompileOptions(max_exception_days=args.max_exception_days)
    _, policy = load_policy(args.policy, options)
    baseline = load_policy(args.baseline, options)[1] if args.baseline else None
    try:
        logs = DecisionLogs(args.log, since=since, until=until)
    except LogError as error:
        print(f"authz replay: {error}", file=sys.stderr)
        return EXIT_USAGE
    with logs:
        try:
            result = replay(logs, policy, baseline=baseline, at=at, samples=args.samples)
        except (duckdb.Error, OSError, EOFError) as error:  # a file unreadable, or cut off mid-gzip
            print(f"authz replay: {error}", file=sys.stderr)
            return EXIT_USAGE
        files = list(logs.files)
    header: dict[str, Any] = {
        "files": files,
        "malformed": result.malformed,
        "at": iso(datetime.fromtimestamp(at, UTC)),
        "policy_version": policy.version,
        "baseline": baseline.version if baseline is not None else "log",
    }
    if args.json:
        print(json.dumps(header | _summary(result, args.top), indent=2))
    else:
        _print(header, result, args.top)
    if args.fail_on_new_deny and result.denied:
        from authz.analysis.inventory_report import counted

        print(f"FAIL: {counted(result.denied, 'logged request')} would be newly denied", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _summary(result: Replay, top: int) -> dict[str, Any]:
    def changes(denies: bool) -> dict[str, Any]:
        flows = result.flows(denies)
        return {
            "records": result.denied if denies else result.allowed,
            "flows_total": len(flows),
            "flows": [_flow(flow) for flow in (flows[:top] if top else flows)],
        }

    return {
        "records": result.records,
        "requests": result.requests,
        "not_replayed": result.not_replayed,
        "unchanged": result.unchanged,
        "reason_changed": result.reason_changed,
        "new_denies": changes(denies=True),
        "new_allows": changes(denies=False),
    }


def _flow(flow: Flow) -> dict[str, Any]:
    return {
        "identity": flow.identity,
        "destination": flow.destination,
        "records": flow.records,
        "requests": flow.requests,
        "first_seen": iso(flow.first),
        "last_seen": iso(flow.last),
        "transitions": {f"{old} -> {new}": records for (old, new), records in flow.transitions.most_common()},
        "samples": [_sample(change) for change in flow.samples],
    }


def _sample(change: Change) -> dict[str, Any]:
    request, now = change.request, change.now
    return {
        "method": request.method, "host": request.host, "sni": request.sni, "port": request.port,
        "path": request.path, "scheme": request.scheme, "zone": request.zone, "records": change.records,
        "last_seen": iso(change.last), "was": {"verdict": change.was[0], "reason": change.was[1]},
        "now": {"verdict": now.verdict.value, "reason": now.reason.value, "policy": now.policy, "rule": now.rule},
    }  # fmt: skip


def _print(header: dict[str, Any], result: Replay, top: int) -> None:
    from authz.analysis.inventory_report import counted as n

    against = "the log's own verdicts" if header["baseline"] == "log" else f"baseline {header['baseline']}"
    print(
        f"replayed {n(result.records, 'record')} ({n(result.requests, 'distinct request')}) from"
        f" {n(len(header['files']), 'file')} under policy {header['policy_version']}, against {against},"
        f" as of {header['at']}"
    )
    print(
        f"  {result.unchanged:,} unchanged ({result.reason_changed:,} for another reason),"
        f" {result.not_replayed:,} not replayed (server errors), {n(header['malformed'], 'malformed line')} skipped"
    )
    for denies, title in ((True, "allowed -> denied"), (False, "denied -> allowed")):
        flows = result.flows(denies)
        count = result.denied if denies else result.allowed
        print(f"\n{title}: {n(count, 'record')} in {n(len(flows), 'flow')}")
        for flow in flows[:top] if top else flows:
            print(
                f"  {flow.identity or '(no identity)'} -> {flow.destination}: {n(flow.records, 'record')},"
                f" {n(flow.requests, 'request')}, {iso(flow.first)} .. {iso(flow.last)}"
            )
            for (old, new), records in flow.transitions.most_common():
                print(f"      {old} -> {new}: {records:,}")
            for change in flow.samples:
                request = change.request
                what = (
                    f"{request.method} {request.host or request.sni}{request.path or ''}"
                    if request.method
                    else f"TLS {request.sni or '-'}"
                )
                print(f"      e.g. {what} ({n(change.records, 'record')}, last {iso(change.last)})")
        if top and len(flows) > top:
            rest = flows[top:]
            more = sum(flow.records for flow in rest)
            print(f"  ... {n(len(rest), 'more flow')}, {n(more, 'record')} (--top 0: all)")
