"""``authz lab``: the pieces of the local demo gateway as commands, for the
compose demo (one container each) and for trying things by hand: issue the
demo certificates, write the example policies moved to today, serve
stand-in destinations, run the tour against a gateway."""

from __future__ import annotations

import argparse
import datetime
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from authz.cli._args import EXIT_FAILED, EXIT_OK, EXIT_USAGE, port, timestamp

__all__ = ["register"]


def register(commands: Any) -> None:
    lab = commands.add_parser(
        "lab", help="the demo gateway's pieces: certificates, stand-in upstreams, the tour"
    )
    parts = lab.add_subparsers(dest="lab_command", required=True, metavar="PART")

    certs = parts.add_parser(
        "certs",
        help="issue a throwaway CA, the gateway's and upstreams' certificates, SVIDs (authz's and the"
        " gateway's for their mTLS, the tour's)",
    )
    certs.add_argument("directory", type=Path, metavar="DIR")
    certs.add_argument(
        "--gateway-name", action="append", default=[], metavar="NAME", help="a name of the gateway"
    )
    certs.add_argument("--ip", action="append", default=[], metavar="IP", help="an address of the gateway")
    certs.add_argument(
        "--upstream-name", action="append", default=[], metavar="NAME", help="another upstream name"
    )
    certs.add_argument(
        "--authz-name", action="append", default=[], metavar="NAME",
        help="a name authz is reached by (its SVID serves TLS for it, and for 127.0.0.1)",
    )  # fmt: skip
    certs.add_argument(
        "--identity", action="append", default=[], metavar="SPIFFE_ID", help="another SVID to issue"
    )
    certs.add_argument("--days", type=float, default=7.0, help="lifetime (default %(default)g days)")
    certs.set_defaults(run=_certs)

    policies = parts.add_parser(
        "policies",
        help="write the example policies into DIR with their dates moved to today (or --at), as the demo serves"
        " them: the break-glass exception open",
    )
    policies.add_argument("directory", type=Path, metavar="DIR")
    policies.add_argument(
        "--from", dest="source", type=Path, metavar="PATH",
        help="where the example policies are (default: policies/ of this checkout)",
    )  # fmt: skip
    policies.add_argument(
        "--at", type=timestamp, metavar="TIME", help="the instant to move them to (RFC 3339; default now)"
    )
    policies.set_defaults(run=_policies)

    upstreams = parts.add_parser("upstreams", help="serve stand-ins for the destinations until stopped")
    upstreams.add_argument("--certs", type=Path, required=True, metavar="DIR", help="where `lab certs` wrote")
    upstreams.add_argument("--bind", default="127.0.0.1", help="address (default %(default)s)")
    upstreams.add_argument("--http-port", type=port, default=18080)
    upstreams.add_argument("--tls-port", type=port, default=18443)
    upstreams.set_defaults(run=_upstreams)

    tour = parts.add_parser(
        "tour", help="run the demo tour against a running gateway; exit 1 if a step misbehaves"
    )
    tour.add_argument("--gateway", default="127.0.0.1", metavar="HOST", help="the gateway's address")
    tour.add_argument("--certs", type=Path, required=True, metavar="DIR", help="where `lab certs` wrote")
    tour.add_argument("--http-port", type=port, default=10080)
    tour.add_argument("--sni-port", type=port, default=10443)
    tour.add_argument("--connect-port", type=port, default=10081)
    tour.add_argument(
        "--access-log", type=Path, metavar="FILE", help="Envoy's access log, for the reasons of closes"
    )
    tour.add_argument("--wait", type=float, default=60.0, metavar="SECONDS", help="for the gateway to listen")
    tour.set_defaults(run=_tour)


def _certs(args: argparse.Namespace) -> int:
    from authz.gateway.demo import tour_identities
    from authz.gateway.lab import AUTHZ_ID, GATEWAY_ID, GATEWAY_NAME, issue_server_certificates
    from authz.gateway.pki import CertificateAuthority

    ca = CertificateAuthority(args.directory, "egress-authz demo CA", datetime.timedelta(days=args.days))
    issue_server_certificates(
        ca, [GATEWAY_NAME, *args.gateway_name], args.upstream_name, ["127.0.0.1", *args.ip]
    )
    # authz's own mTLS listener: authz serves its SVID, the gateway calls it with its own.
    served = ca.issue_svid(AUTHZ_ID, server_names=["127.0.0.1", *args.authz_name])
    caller = ca.issue_svid(GATEWAY_ID)
    for identity in [*tour_identities(), *args.identity]:
        ca.issue_svid(identity)
    for path in args.directory.iterdir():
        path.chmod(0o644)  # readable by the other containers' users: throwaway demo material only
    print(
        f"issued the demo CA, gateway, upstream and {len(tour_identities()) + len(args.identity)} SVIDs in {args.directory};"
        f" authz's SVID {served.certificate.name} ({AUTHZ_ID}), the gateway's {caller.certificate.name} ({GATEWAY_ID})"
    )
    return EXIT_OK


def _policies(args: argparse.Namespace) -> int:
    from authz.gateway.examples import EXAMPLES, EXAMPLES_AS_OF, copy_examples

    source = args.source or EXAMPLES
    if not source.is_dir():
        print(f"authz lab policies: no example policies in {source} (name them with --from)", file=sys.stderr)
        return EXIT_USAGE
    days = copy_examples(args.directory, source=source, at=args.at)
    print(
        f"wrote the example policies of {source} into {args.directory}, their dates moved {days} days"
        f" from {EXAMPLES_AS_OF:%Y-%m-%d}, the day they are written as of"
    )
    return EXIT_OK


def _upstreams(args: argparse.Namespace) -> int:
    from authz.gateway.upstreams import start_upstream, tls_context

    tls = start_upstream("tls", tls_context(args.certs / "upstream.pem", args.certs / "upstream.key"),
                         (args.bind, args.tls_port))  # fmt: skip
    plain = start_upstream("http", None, (args.bind, args.http_port))
    print(f"upstreams: TLS on {args.bind}:{args.tls_port}, HTTP on {args.bind}:{args.http_port}", flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    for server in (tls, plain):
        server.shutdown()
    return EXIT_OK


def _listening(host: str, ports: Iterable[int]) -> bool:
    for number in ports:
        try:
            socket.create_connection((host, number), timeout=2).close()
        except OSError:
            return False
    return True


def _tour(args: argparse.Namespace) -> int:
    from authz.gateway.demo import run_tour, table
    from authz.gateway.remote import RemoteGateway

    ports = {"http": args.http_port, "sni": args.sni_port, "connect": args.connect_port}
    deadline = time.monotonic() + args.wait
    while not _listening(args.gateway, ports.values()):
        if time.monotonic() > deadline:
            print(
                f"the gateway at {args.gateway} does not listen on {sorted(ports.values())}", file=sys.stderr
            )
            return EXIT_FAILED
        time.sleep(0.5)
    rows, failures = run_tour(RemoteGateway(args.gateway, ports, args.certs, args.access_log))
    print(table(rows))
    print(f"\n{len(rows) - failures} passed, {failures} failed")
    sys.stdout.flush()
    return EXIT_FAILED if failures else EXIT_OK
