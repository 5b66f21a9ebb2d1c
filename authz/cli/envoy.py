"""``authz envoy-config``: the zone egress gateway's Envoy bootstrap."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from authz.cli._args import EXIT_OK, port

__all__ = ["register"]


def register(commands: Any) -> None:
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
    envoy.add_argument("--http-port", type=port, default=10080)
    envoy.add_argument("--sni-port", type=port, default=10443)
    envoy.add_argument("--connect-port", type=port, default=10081)
    envoy.add_argument("--admin-port", type=port, default=9901)
    envoy.add_argument("--authz-timeout-ms", type=int, default=250)
    envoy.add_argument("--upstream-tls", metavar="HOST:PORT", help="send all TLS egress here (demo, tests)")
    envoy.add_argument(
        "--upstream-http", metavar="HOST:PORT", help="send all plain egress here (demo, tests)"
    )
    envoy.add_argument("--upstream-ca", help="trust bundle for upstream TLS (default: the system's)")
    envoy.add_argument("--access-log", default="/dev/stdout", metavar="PATH")
    envoy.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write (default: stdout)")
    envoy.set_defaults(run=_envoy_config)


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
