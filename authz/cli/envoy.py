"""``authz envoy-config``: the zone egress gateway's Envoy bootstrap."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import TYPE_CHECKING, Any

from authz.cli._args import EXIT_OK, destination, port
from authz.core.destination import format_destination

if TYPE_CHECKING:
    from authz.gateway.address_guard import IpAddress
    from authz.policy.load import PolicySet

__all__ = ["register"]


def register(commands: Any) -> None:
    envoy = commands.add_parser("envoy-config", help="write the zone egress gateway's Envoy configuration")
    envoy.add_argument(
        "--zone", required=True, help="the zone name, sent to authz as context_extensions.zone"
    )
    envoy.add_argument(
        "--authz", metavar="ADDRESS", help="authz's HOST:PORT or unix:/path (required unless --no-ext-authz)"
    )
    envoy.add_argument(
        "--trust-domain", default="prod.example.org", help="SVIDs must be of this trust domain"
    )
    envoy.add_argument("--ca", default="certs/ca.pem", help="the zone's trust bundle (PEM)")
    envoy.add_argument("--cert", default="certs/gateway.pem", help="the gateway's certificate (PEM)")
    envoy.add_argument("--key", default="certs/gateway.key", help="the gateway's private key (PEM)")
    envoy.add_argument("--bind", default="0.0.0.0", help="listener address (default %(default)s)")
    envoy.add_argument("--http-port", type=port, default=10080)
    envoy.add_argument("--sni-port", type=port, default=10443)
    envoy.add_argument(
        "--sni-destination-port",
        type=port,
        default=443,
        help="where the SNI listener connects at the destination (default %(default)s; authz serve --sni-port)",
    )
    envoy.add_argument("--connect-port", type=port, default=10081)
    envoy.add_argument("--admin-port", type=port, default=9901)
    envoy.add_argument("--authz-timeout-ms", type=int, default=250)
    envoy.add_argument(
        "--authz-id", metavar="SPIFFE_ID",
        help="authz's SPIFFE ID: call authz over mTLS (authz serve --tls-cert) and accept only this ID",
    )  # fmt: skip
    envoy.add_argument(
        "--authz-cert",
        metavar="PEM",
        help="the certificate shown to authz (default --cert): its --allow-caller",
    )
    envoy.add_argument("--authz-key", metavar="PEM", help="its private key (default --key)")
    envoy.add_argument("--upstream-tls", metavar="HOST:PORT", help="send all TLS egress here (demo, tests)")
    envoy.add_argument(
        "--upstream-http", metavar="HOST:PORT", help="send all plain egress here (demo, tests)"
    )
    envoy.add_argument("--upstream-ca", help="trust bundle for upstream TLS (default: the system's)")
    envoy.add_argument("--access-log", default="/dev/stdout", metavar="PATH")
    envoy.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="PATH",
        help="policy files or directories: their rate_limit entries become Envoy's local rate limits, the"
        " addresses their rules name exactly pass the resolved-address guard",
    )
    envoy.add_argument(
        "--dns-resolver",
        action="append",
        default=[],
        type=_resolver,
        metavar="IP:PORT",
        help="the forward proxy asks only this DNS server (repeatable; default: the system's): a lab's resolver",
    )
    envoy.add_argument(
        "--max-rate-limited-identities",
        type=int,
        default=1000,
        metavar="N",
        help="identities a local rate limit keeps a bucket for, per rule (default %(default)s)",
    )
    envoy.add_argument(
        "--ratelimit-service",
        metavar="HOST:PORT",
        help="envoyproxy/ratelimit's gRPC address: global limits across gateways",
    )
    envoy.add_argument(
        "--otlp-collector", metavar="HOST:PORT", help="export Envoy's own spans to this OTLP/gRPC collector"
    )
    envoy.add_argument(
        "--ratelimit-config",
        metavar="FILE",
        help="also write envoyproxy/ratelimit's config for --policy here",
    )
    envoy.add_argument(
        "--rbac",
        action="store_true",
        help="add Envoy's RBAC filters from --policy before ext_authz: a static floor that denies"
        " what no rule could admit without asking authz (what it leaves out goes to stderr)",
    )
    envoy.add_argument(
        "--no-ext-authz",
        dest="ext_authz",
        action="store_false",
        help="no ext_authz filters: the RBAC floor alone (with --rbac), or no authorization at all (benchmarks)",
    )
    envoy.add_argument(
        "--direct-response",
        action="store_true",
        help="the HTTP listener answers 200 itself instead of proxying: benchmarks of authorization alone",
    )
    envoy.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write (default: stdout)")
    envoy.set_defaults(run=_envoy_config)


def _envoy_config(args: argparse.Namespace) -> int:
    import yaml

    from authz.gateway import ratelimit
    from authz.gateway.envoy_config import GatewaySpec, render
    from authz.policy import load_paths

    if args.ext_authz and args.authz is None:
        raise SystemExit("authz envoy-config: --authz is required (or --no-ext-authz)")
    if args.rbac and not args.policy:
        raise SystemExit(
            "authz envoy-config: --rbac needs --policy PATH (the floor is made from the policies)"
        )
    policy_set = load_paths(args.policy) if args.policy else None
    limits = ratelimit.limits_from(policy_set) if policy_set is not None else ()
    exempt = _guard_exemptions(policy_set) if policy_set is not None and args.upstream_tls is None else ()
    floor = None
    if args.rbac:
        from authz.gateway import rbac

        assert policy_set is not None
        floor = rbac.floor_from(policy_set)
        print(
            "authz envoy-config --rbac: the RBAC floor does not hold (authz enforces these):", file=sys.stderr
        )
        for line in rbac.NOT_IN_FLOOR:
            print(f"  - {line}", file=sys.stderr)
    if not args.ext_authz and limits:
        print(
            "authz envoy-config --no-ext-authz: no rate limits rendered (they count on the identity authz names)",
            file=sys.stderr,
        )
    if args.ratelimit_config is not None:
        with open(args.ratelimit_config, "w", encoding="utf-8") as output:
            output.write("# envoyproxy/ratelimit configuration, rendered by `authz envoy-config`.\n")
            yaml.safe_dump(ratelimit.service_config(limits), output, sort_keys=False)
    spec = GatewaySpec(
        zone=args.zone,
        authz=args.authz or "",
        trust_domain=args.trust_domain,
        ca=args.ca,
        certificate=args.cert,
        key=args.key,
        bind=args.bind,
        http_port=args.http_port,
        sni_port=args.sni_port,
        sni_destination_port=args.sni_destination_port,
        connect_port=args.connect_port,
        admin_port=args.admin_port,
        authz_timeout_ms=args.authz_timeout_ms,
        authz_id=args.authz_id,
        authz_certificate=args.authz_cert,
        authz_key=args.authz_key,
        upstream_tls=args.upstream_tls,
        upstream_http=args.upstream_http,
        upstream_ca=args.upstream_ca,
        access_log=args.access_log,
        rate_limits=limits,
        max_rate_limited_identities=args.max_rate_limited_identities,
        ratelimit_service=args.ratelimit_service,
        otlp_collector=args.otlp_collector,
        ext_authz=args.ext_authz,
        rbac=floor,
        guard_exempt=exempt,
        dns_resolvers=tuple(args.dns_resolver),
        direct_response=args.direct_response,
    )
    text = render(spec)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as output:
            output.write(text)
    return EXIT_OK


def _resolver(text: str) -> str:
    """A DNS server's ``IP:PORT`` (c-ares takes addresses, not names)."""
    host, number = destination(text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a DNS server is an IP address and port") from None
    return format_destination(host, number)


def _guard_exemptions(policy_set: PolicySet) -> tuple[IpAddress, ...]:
    """The addresses the policies name exactly; a wider block in a forbidden range is said on stderr."""
    from authz.gateway import address_guard

    exemptions = address_guard.exemptions_from(policy_set)
    for block in exemptions.blocks:
        print(
            f"authz envoy-config: {block} is not exempt from the resolved-address guard"
            " (it exempts exact addresses only: name each one)",
            file=sys.stderr,
        )
    return exemptions.addresses
