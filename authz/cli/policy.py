"""Policy as code: ``check`` (validate and lint), ``explain`` (one
decision and why), ``test`` (policy unit tests)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from authz.cli import check
from authz.cli._args import EXIT_FAILED, EXIT_OK, compile_options, max_exception_days, port, timestamp
from authz.core.decision import Mode
from authz.core.engine import explain
from authz.core.request import EgressRequest
from authz.policy import load_policy
from authz.policy.testcases import run_tests

__all__ = ["register"]


def register(commands: Any) -> None:
    check.register(commands)

    explain_ = commands.add_parser("explain", help="show the decision for one request, and why")
    explain_.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    explain_.add_argument("--identity", help="the caller's SPIFFE ID (omit: no identity)")
    explain_.add_argument("--host", required=True, help="destination host (HTTP Host or the SNI)")
    explain_.add_argument("--port", type=port, help="destination port (default: the scheme's)")
    explain_.add_argument("--sni", help="TLS SNI, when it differs from or stands without --host")
    explain_.add_argument("--method", help="HTTP method; omit for a TCP/TLS connection")
    explain_.add_argument("--path", help="HTTP path")
    explain_.add_argument("--zone", help="the zone egress gateway asking")
    explain_.add_argument("--scheme", help="http or https, for the default port")
    explain_.add_argument(
        "--at", type=timestamp, metavar="TIME", help="decide as of this RFC 3339 instant (default: now)"
    )
    explain_.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default=Mode.ENFORCE.value,
        help="the zone's mode, as in serve",
    )
    max_exception_days(explain_)
    explain_.add_argument("--json", action="store_true", help="print one JSON object")
    explain_.set_defaults(run=_explain)

    test = commands.add_parser("test", help="run EgressPolicyTest cases against the policies")
    test.add_argument("paths", nargs="+", metavar="PATH", help="policy and test files or directories")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    max_exception_days(test)
    test.set_defaults(run=_test)


def _explain(args: argparse.Namespace) -> int:
    _, compiled = load_policy(args.paths, compile_options(args))
    request = EgressRequest(
        identity=args.identity,
        host=args.host,
        port=args.port,
        sni=args.sni,
        method=args.method,
        path=args.path,
        zone=args.zone,
        scheme=args.scheme,
    )
    explanation = explain(compiled, request, args.at.timestamp() if args.at is not None else None)
    decision = explanation.decision
    if args.json:
        record = decision.to_dict()
        record["steps"] = list(explanation.steps)
        print(json.dumps(record, indent=2))
        return EXIT_OK
    headline = f"{decision.verdict.value.upper()}  {decision.reason.value}"
    if decision.dry_run_reason is not None:
        headline += f" (would deny: {decision.dry_run_reason.value})"
    policy = "-"
    if decision.policy is not None:
        policy = f"{decision.policy} (owner {decision.owner}, change {decision.change_ref or '-'})"
    print(headline)
    rows = [
        ("identity", decision.identity or "-"),
        ("destination", decision.destination),
        ("policy", policy),
        ("rule", decision.rule or "-"),
    ]
    if decision.exception is not None:
        rows.append(
            (
                "exception",
                f"{decision.exception} (owner {decision.exception_owner}, ticket {decision.ticket})",
            )
        )
    if decision.revocation is not None:
        rows.append(("revocation", f"{decision.revocation} (ticket {decision.ticket or '-'})"))
    rows += [("mode", decision.mode.value), ("version", decision.policy_version)]
    for label, value in rows:
        print(f"  {label:<12} {value}")
    print("why:")
    for step in explanation.steps:
        print(f"  - {step}")
    return EXIT_OK


def _test(args: argparse.Namespace) -> int:
    policy_set, compiled = load_policy(args.paths, compile_options(args))
    results = run_tests(compiled, policy_set)
    if not results:
        print("no EgressPolicyTest cases found", file=sys.stderr)
        return EXIT_FAILED
    for result in results:
        if not result.passed:
            print(f"{result.file}:{result.line}: FAIL {result.name}: {'; '.join(result.failures)}")
            print(
                f"    got {result.decision.verdict.value} {result.decision.reason.value}: {result.decision.detail}"
            )
        elif args.verbose:
            print(f"{result.file}:{result.line}: ok {result.name}")
    failed = sum(not result.passed for result in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return EXIT_FAILED if failed else EXIT_OK
