"""The ``authz`` command line: check, explain and test policies."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from authz import __version__
from authz.core.engine import explain
from authz.core.request import EgressRequest
from authz.policy import PolicyError, lint, load_policy
from authz.policy.testcases import run_tests

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE if args.command in ("explain", "test") else EXIT_FAILED
    return result


def _check(args: argparse.Namespace) -> int:
    policy_set, compiled = load_policy(args.paths)
    warnings = lint(policy_set)
    for warning in warnings:
        print(warning, file=sys.stderr)
    rules = sum(len(service.rules) for service in compiled.services)
    print(
        f"ok: {len(compiled.services)} policies, {rules} rules, {len(policy_set.tests)} test files,"
        f" {len(warnings)} warnings; version {compiled.version}"
    )
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    _, compiled = load_policy(args.paths)
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
    explanation = explain(compiled, request)
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
    for label, value in (
        ("identity", decision.identity or "-"),
        ("destination", decision.destination),
        ("policy", policy),
        ("rule", decision.rule or "-"),
        ("mode", decision.mode.value),
        ("version", decision.policy_version),
    ):
        print(f"  {label:<12} {value}")
    print("why:")
    for step in explanation.steps:
        print(f"  - {step}")
    return EXIT_OK


def _test(args: argparse.Namespace) -> int:
    policy_set, compiled = load_policy(args.paths)
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


def _serve(args: argparse.Namespace) -> int:
    from authz.ext_authz.attributes import GatewaySettings
    from authz.ext_authz.server import ServeConfig
    from authz.ext_authz.workers import run

    if args.workers < 1:
        raise SystemExit("authz serve: --workers must be at least 1")
    config = ServeConfig(
        policy_paths=tuple(args.policy),
        listen=args.listen,
        workers=args.workers,
        reflection=args.reflection,
        grace_seconds=args.grace,
        check_timeout=args.check_timeout,
        gateway=GatewaySettings.create(
            gateway_names=args.gateway_name,
            trusted_xfcc_peers=args.trust_xfcc_from,
            zone=args.zone,
            sni_port=args.sni_port,
        ),
        decision_log=args.decision_log,
        decision_log_max_bytes=args.decision_log_max_mb * 2**20,
        metrics_port=args.metrics_port,
        first_seen_capacity=args.first_seen_capacity,
    )
    return run(config)


def _envoy_config(args: argparse.Namespace) -> int:
    from authz.gateway.envoy_config import GatewaySpec, render

    spec = GatewaySpec(
        zone=args.zone,
        authz=args.authz,
        trust_domain=args.trust_domain,
        ca=args.ca,
        certificate=args.cert,
        key=args.key,
        bind=args.bind,
        http_port=args.http_port,
        sni_port=args.sni_port,
        connect_port=args.connect_port,
        admin_port=args.admin_port,
        authz_timeout_ms=args.authz_timeout_ms,
        upstream_tls=args.upstream_tls,
        upstream_http=args.upstream_http,
        upstream_ca=args.upstream_ca,
        access_log=args.access_log,
    )
    text = render(spec)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as output:
            output.write(text)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authz", description="Identity-aware egress authorization.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="validate and lint policy files (exit 1 on errors)")
    check.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    check.set_defaults(run=_check)

    explain_ = commands.add_parser("explain", help="show the decision for one request, and why")
    explain_.add_argument("paths", nargs="+", metavar="PATH", help="policy files or directories")
    explain_.add_argument("--identity", help="the caller's SPIFFE ID (omit: no identity)")
    explain_.add_argument("--host", required=True, help="destination host (HTTP Host or the SNI)")
    explain_.add_argument("--port", type=_port, help="destination port (default: the scheme's)")
    explain_.add_argument("--sni", help="TLS SNI, when it differs from or stands without --host")
    explain_.add_argument("--method", help="HTTP method; omit for a TCP/TLS connection")
    explain_.add_argument("--path", help="HTTP path")
    explain_.add_argument("--zone", help="the zone egress gateway asking")
    explain_.add_argument("--scheme", help="http or https, for the default port")
    explain_.add_argument("--json", action="store_true", help="print one JSON object")
    explain_.set_defaults(run=_explain)

    test = commands.add_parser("test", help="run EgressPolicyTest cases against the policies")
    test.add_argument("paths", nargs="+", metavar="PATH", help="policy and test files or directories")
    test.add_argument("-v", "--verbose", action="store_true", help="list passing cases too")
    test.set_defaults(run=_test)

    serve = commands.add_parser("serve", help="answer Envoy's ext_authz Check calls over gRPC")
    serve.add_argument(
        "--policy", action="append", required=True, metavar="PATH", help="policy files or directories"
    )
    serve.add_argument(
        "--listen",
        default="127.0.0.1:9191",
        metavar="ADDRESS",
        help="HOST:PORT or unix:/path (default %(default)s)",
    )
    serve.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (default %(default)s)"
    )
    serve.add_argument(
        "--no-reflection", dest="reflection", action="store_false", help="turn gRPC reflection off"
    )
    serve.add_argument(
        "--grace", type=float, default=5.0, metavar="SECONDS", help="drain time on SIGTERM/SIGINT"
    )
    serve.add_argument(
        "--check-timeout",
        type=float,
        default=0.1,
        metavar="SECONDS",
        help="deny with TIMEOUT past this (default 0.1)",
    )
    serve.add_argument(
        "--gateway-name",
        action="append",
        default=[],
        metavar="NAME",
        help="a name clients use for the gateway itself",
    )
    serve.add_argument(
        "--trust-xfcc-from", action="append", default=[], metavar="SPIFFE_ID",
        help="a proxy whose x-forwarded-client-cert header is believed",
    )  # fmt: skip
    serve.add_argument("--zone", help="the zone when Envoy sets no context_extensions zone")
    serve.add_argument(
        "--sni-port", type=_port, help="destination port for SNI-only checks (default: listener port)"
    )
    serve.add_argument("--decision-log", metavar="PATH", help="JSON-lines decision log ('-' for stdout)")
    serve.add_argument(
        "--decision-log-max-mb",
        type=int,
        default=100,
        metavar="MB",
        help="rotate the decision log past this size",
    )
    serve.add_argument("--metrics-port", type=_port, help="serve Prometheus metrics on 127.0.0.1:PORT")
    serve.add_argument(
        "--first-seen-capacity",
        type=int,
        default=100_000,
        metavar="N",
        help="(identity, destination) pairs remembered",
    )
    serve.set_defaults(run=_serve)

    envoy = commands.add_parser("envoy-config", help="write the zone egress gateway's Envoy configuration")
    envoy.add_argument(
        "--zone", required=True, help="the zone name, sent to authz as context_extensions.zone"
    )
    envoy.add_argument("--authz", required=True, metavar="ADDRESS", help="authz's HOST:PORT or unix:/path")
    envoy.add_argument(
        "--trust-domain", default="prod.example.org", help="SVIDs must be of this trust domain"
    )
    envoy.add_argument("--ca", default="certs/ca.pem", help="the zone's trust bundle (PEM)")
    envoy.add_argument("--cert", default="certs/gateway.pem", help="the gateway's certificate (PEM)")
    envoy.add_argument("--key", default="certs/gateway.key", help="the gateway's private key (PEM)")
    envoy.add_argument("--bind", default="0.0.0.0", help="listener address (default %(default)s)")
    envoy.add_argument("--http-port", type=_port, default=10080)
    envoy.add_argument("--sni-port", type=_port, default=10443)
    envoy.add_argument("--connect-port", type=_port, default=10081)
    envoy.add_argument("--admin-port", type=_port, default=9901)
    envoy.add_argument("--authz-timeout-ms", type=int, default=250)
    envoy.add_argument("--upstream-tls", metavar="HOST:PORT", help="send all TLS egress here (demo, tests)")
    envoy.add_argument(
        "--upstream-http", metavar="HOST:PORT", help="send all plain egress here (demo, tests)"
    )
    envoy.add_argument("--upstream-ca", help="trust bundle for upstream TLS (default: the system's)")
    envoy.add_argument("--access-log", default="/dev/stdout", metavar="PATH")
    envoy.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write (default: stdout)")
    envoy.set_defaults(run=_envoy_config)
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)
