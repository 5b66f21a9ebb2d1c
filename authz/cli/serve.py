"""``authz serve``: answer Envoy's ext_authz Check calls over gRPC."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.util import find_spec
from typing import Any

from authz.cli._args import EXIT_FAILED, EXIT_OK, duration, port
from authz.core.decision import Mode
from authz.policy.compile import DEFAULT_MAX_EXCEPTION_DAYS
from authz.telemetry.state_store import DEFAULT_TTL, PASSWORD_ENV, StateStoreURLError, check_url

__all__ = ["TRANSPORTS", "default_transport", "register"]

TRANSPORTS = ("grpcio", "pyvoy")
EXIT_BAD_TLS = 2  # as for a bad policy or address: the configuration is wrong


def default_transport() -> str:
    """pyvoy where it is installed (a dependency on Linux x86_64 and aarch64, the
    platforms it ships for): about 3x the checks per core of grpcio; grpcio elsewhere."""
    return "pyvoy" if find_spec("pyvoy") is not None else "grpcio"


def register(commands: Any) -> None:
    health = commands.add_parser(
        "health", help="exit 0 when authz at TARGET serves (gRPC health): for healthchecks"
    )
    health.add_argument(
        "--target", default="127.0.0.1:9191", metavar="ADDRESS", help="HOST:PORT or unix:/path"
    )
    health.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS")
    health.set_defaults(run=_health)

    serve = commands.add_parser("serve", help="answer Envoy's ext_authz Check calls over gRPC")
    serve.add_argument(
        "--policy", action="append", required=True, metavar="PATH", help="policy files or directories"
    )
    serve.add_argument(
        "--shadow-policy",
        action="append",
        default=[],
        metavar="PATH",
        help="a candidate policy set (files or directories) every check is also evaluated against, after"
        " its answer: disagreements go to the span, the decision log and metrics, never to the answer",
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
        "--max-restarts",
        type=int,
        default=5,
        metavar="N",
        help="a worker that dies is restarted; more deaths than N within --restart-window stop authz"
        " with exit 1 (default %(default)s)",
    )
    serve.add_argument(
        "--restart-window",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="the crash-loop window (default %(default)s)",
    )
    serve.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=default_transport(),
        help="pyvoy (Envoy's HTTP/2 server running the check in-process; installed on Linux x86_64 and"
        " aarch64) or grpcio (grpc.aio; the one with gRPC reflection) (default here: %(default)s)",
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
        "--sni-port", type=port, help="destination port for SNI-only checks (default: listener port)"
    )
    serve.add_argument("--decision-log", metavar="PATH", help="JSON-lines decision log ('-' for stdout)")
    serve.add_argument(
        "--decision-log-max-mb",
        type=int,
        default=100,
        metavar="MB",
        help="rotate the decision log past this size",
    )
    serve.add_argument(
        "--metrics-port", type=port, help="serve Prometheus metrics on PORT (worker i: PORT+i)"
    )
    serve.add_argument(
        "--metrics-bind",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="the metrics endpoint's address (default %(default)s; 0.0.0.0 in a pod, for the scraper)",
    )
    serve.add_argument(
        "--first-seen-capacity",
        type=int,
        default=100_000,
        metavar="N",
        help="(identity, destination) pairs remembered",
    )
    serve.add_argument(
        "--state-store",
        metavar="URL",
        help="Redis or Valkey (redis://HOST:PORT/DB, rediss:// for TLS, unix:///path.sock): first sightings"
        " judged once for the whole fleet, never on the check path; empty or absent: per process."
        f" A password may come from ${PASSWORD_ENV}",
    )
    serve.add_argument(
        "--first-seen-ttl",
        type=duration,
        default=DEFAULT_TTL,
        metavar="DURATION",
        help="with --state-store: a pair is known this long after it was last learned (default 90d)",
    )
    serve.add_argument(
        "--state-store-timeout",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with --state-store: a round trip longer than this is a failure (default %(default)s)",
    )
    serve.add_argument(
        "--mode",
        choices=[m.value for m in Mode],
        default=Mode.ENFORCE.value,
        help="dry-run: the whole zone's allowlist denials are recorded, not enforced (the guards stay)",
    )
    serve.add_argument(
        "--max-exception-days",
        type=float,
        default=DEFAULT_MAX_EXCEPTION_DAYS,
        metavar="DAYS",
        help="longest a break-glass exception may stay open, from each load (default %(default)g)",
    )
    serve.add_argument(
        "--rate-limit-headers",
        action="store_true",
        help="on allow, set x-egress-identity, -policy and -rule for Envoy's rate limits",
    )
    serve.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="do not watch the policy files (SIGHUP still reloads)",
    )
    serve.add_argument(
        "--reload-debounce-ms",
        type=int,
        default=50,
        metavar="MS",
        help="quiet time after a file change before reloading (default %(default)s)",
    )
    serve.add_argument(
        "--reload-poll",
        type=float,
        metavar="SECONDS",
        help="poll the files at this interval instead of inotify (network filesystems)",
    )
    tls = serve.add_argument_group(
        "mTLS",
        "only the gateway may ask: its certificate must chain to --client-ca and name an --allow-caller",
    )
    tls.add_argument("--tls-cert", metavar="PEM", help="authz's certificate (reread when the file changes)")
    tls.add_argument("--tls-key", metavar="PEM", help="its private key")
    tls.add_argument("--client-ca", metavar="PEM", help="the CA bundle callers' certificates must chain to")
    tls.add_argument(
        "--allow-caller", action="append", default=[], metavar="SPIFFE_ID",
        help="a caller that may ask for decisions (repeatable; spiffe://td/ns/x/* for a path prefix)",
    )  # fmt: skip
    tls.add_argument(
        "--health-listen", metavar="ADDRESS",
        help="a plaintext listener for grpc.health (kubelet probes); with mTLS, Check there is refused",
    )  # fmt: skip
    serve.set_defaults(run=_serve)


def _tls_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the mTLS flags, if anything (checked before any process starts)."""
    from authz.core.identity import InvalidSpiffeId
    from authz.ext_authz.callers import CallerCheck
    from authz.ext_authz.tls import TlsFiles

    given = [args.tls_cert, args.tls_key, args.client_ca]
    if not any(given):
        return "--allow-caller needs --tls-cert, --tls-key and --client-ca" if args.allow_caller else None
    if not all(given):
        return "--tls-cert, --tls-key and --client-ca go together"
    if not args.allow_caller:
        return "name at least one --allow-caller (the gateway's SPIFFE ID)"
    try:
        CallerCheck(args.allow_caller)
    except InvalidSpiffeId as error:
        return f"--allow-caller: {error}"
    try:
        TlsFiles(args.tls_cert, args.tls_key, args.client_ca).read()
    except (OSError, ValueError) as error:
        return str(error)
    return None


def _shadow_problem(args: argparse.Namespace) -> str | None:
    """A shadow policy with nowhere to record its outcome, if so."""
    from authz.telemetry import TelemetryConfig

    disabled = TelemetryConfig(os.environ).disabled
    if args.shadow_policy and disabled and args.decision_log is None and args.metrics_port is None:
        return "--shadow-policy records into spans, --decision-log or --metrics-port; OTEL_SDK_DISABLED=true"\
            " and neither flag is given"  # fmt: skip
    return None


def _state_store_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the state store's flags, if anything (checked before anything listens)."""
    if args.first_seen_ttl <= 0 or args.state_store_timeout <= 0:
        return "--first-seen-ttl and --state-store-timeout must be above 0"
    if args.state_store:
        try:
            check_url(args.state_store)
        except StateStoreURLError as error:
            return f"--state-store {error}"
    return None


def _serve(args: argparse.Namespace) -> int:
    from authz.ext_authz.attributes import GatewaySettings
    from authz.ext_authz.server import ServeConfig
    from authz.ext_authz.workers import run

    if args.workers < 1:
        raise SystemExit("authz serve: --workers must be at least 1")
    if args.max_restarts < 0 or args.restart_window <= 0:
        raise SystemExit("authz serve: --max-restarts must be at least 0, --restart-window above 0")
    problem = _tls_problem(args) or _shadow_problem(args) or _state_store_problem(args)
    if problem is not None:
        print(f"authz serve: {problem}", file=sys.stderr)
        return EXIT_BAD_TLS
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
            rate_limit_headers=args.rate_limit_headers,
        ),
        decision_log=args.decision_log,
        decision_log_max_bytes=args.decision_log_max_mb * 2**20,
        metrics_port=args.metrics_port,
        metrics_bind=args.metrics_bind,
        first_seen_capacity=args.first_seen_capacity,
        state_store=args.state_store or None,
        first_seen_ttl=args.first_seen_ttl,
        state_store_timeout=args.state_store_timeout,
        mode=Mode(args.mode),
        max_exception_days=args.max_exception_days,
        watch=args.watch,
        reload_debounce_ms=args.reload_debounce_ms,
        reload_poll_seconds=args.reload_poll,
        transport=args.transport,
        max_restarts=args.max_restarts,
        restart_window=args.restart_window,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
        allow_callers=tuple(args.allow_caller),
        health_listen=args.health_listen,
        shadow_policy_paths=tuple(args.shadow_policy),
    )
    return run(config)


def _health(args: argparse.Namespace) -> int:
    from authz.ext_authz.health import serving

    if serving(args.target, args.timeout):
        return EXIT_OK
    print(f"authz at {args.target} is not serving", file=sys.stderr)
    return EXIT_FAILED
