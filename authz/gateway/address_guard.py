"""The resolved-address guard: the gateway never connects, from its own
network position, to an address a destination name should not lead to.

authz decides on names; it cannot see the address Envoy's dynamic forward
proxy will connect to. A name policy allows may resolve to loopback, a cloud
metadata address, link-local or a private range (a subdomain under an
allowed wildcard is the attacker's, or DNS is rebound after the check). So
the forward proxy's one DNS cache, shared by the HTTP, CONNECT and SNI
listeners, drops every resolved address in ``FORBIDDEN`` (Envoy's
``DnsCacheConfig.resolved_address_filter``), IP-literal hosts included;
only the exact addresses a policy rule names (an IP host or a single-address
CIDR) stay reachable. A wider CIDR in a rule is no exemption: authz may
allow the block, the guard still wants each address named.

The filter removes forbidden addresses from each answer, so the forbidden
one of a multi-address answer (``[allowed-but-refusing, 127.0.0.1]``) is
never tried; a check on the first address alone (RBAC's ``upstream_ip_port``)
would let happy eyeballs fall through to it. An answer with nothing left is a DNS failure
(``dns_resolution_failure{address_denied}``): HTTP and CONNECT map it to a
403 naming the reason; the SNI listener can only close the connection, and
its network RBAC names the reason in the access log. A host that re-resolves
to a forbidden address (rebinding) keeps its last good address.

Envoy's ``AddressMatcher`` has no "except", so the exemptions are cut out of
the ranges (``ipaddress``'s ``address_exclude``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from envoy_data_plane.envoy.config.accesslog.v3 import AccessLogFilter, ExtensionFilter
from envoy_data_plane.envoy.config.core.v3 import (
    CidrRange,
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
    SubstitutionFormatString,
    TypedExtensionConfig,
)
from envoy_data_plane.envoy.config.rbac.v3 import (
    Permission,
    PermissionSet,
    Policy,
    Principal,
    Rbac,
    RbacAction,
)
from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    LocalReplyConfig,
    ResponseMapper,
)
from envoy_data_plane.envoy.extensions.filters.network.rbac.v3 import Rbac as NetworkRbac
from envoy_data_plane.envoy.extensions.rbac.matchers.upstream_ip_port.v3 import UpstreamIpPortMatcher
from envoy_data_plane.envoy.type.matcher.v3 import AddressMatcher
from envoy_data_plane.google.protobuf import Any as AnyMessage
from envoy_data_plane.google.protobuf import Struct
from envoy_data_plane.xds.core.v3 import CidrRange as XdsCidrRange

from authz.core.destination import IpNetwork
from authz.core.metadata_endpoints import METADATA_ENDPOINTS
from authz.policy.load import PolicySet
from authz.policy.model import EgressException, EgressRule

__all__ = [
    "ADDRESS_DENIED",
    "FORBIDDEN",
    "REASON",
    "SNI_GUARD_POLICY",
    "Exemptions",
    "IpAddress",
    "address_denied_reply",
    "exemptions_from",
    "forbidden_networks",
    "guarded_networks",
    "resolved_address_filter",
    "sni_guard_filter",
]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = TypeVar("_Network", ipaddress.IPv4Network, ipaddress.IPv6Network)

#: Envoy's response code details when the DNS cache dropped every address of an answer.
ADDRESS_DENIED = "dns_resolution_failure{address_denied}"
#: The reason the gateway's 403 names (``x-egress-reason``), like authz's own reasons.
REASON = "RESOLVED_ADDRESS_DENIED"
#: The SNI listener's network RBAC policy: no address it may connect to (denied or unresolved).
SNI_GUARD_POLICY = "no_allowed_upstream_address"

_V4_FORBIDDEN: dict[str, tuple[str, ...]] = {
    "unspecified, 'this network'": ("0.0.0.0/8",),
    "loopback": ("127.0.0.0/8",),
    "link-local, cloud metadata 169.254.169.254": ("169.254.0.0/16",),
    "private (RFC 1918)": ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"),
    "shared address space (CGNAT), Alibaba's metadata 100.100.100.200": ("100.64.0.0/10",),
    "benchmarking": ("198.18.0.0/15",),
    "multicast": ("224.0.0.0/4",),
    "reserved, broadcast": ("240.0.0.0/4",),
}
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix


def _metadata_addresses() -> tuple[str, ...]:
    """The metadata endpoints' addresses, which authz denies as hosts and the
    guard as resolved addresses; Azure's WireServer (168.63.129.16) and
    Oracle's 192.0.0.192 are in no range above."""
    found = []
    for endpoint in sorted(METADATA_ENDPOINTS):
        try:
            address = ipaddress.ip_address(endpoint)
        except ValueError:
            continue  # a name (metadata.google.internal): what it resolves to is in the ranges
        found.append(f"{address}/{address.max_prefixlen}")
    return tuple(found)


def _nat64(networks: Iterable[str]) -> tuple[str, ...]:
    """The IPv4 ranges as NAT64 translates them (``64:ff9b::a.b.c.d``): only
    these, so that NAT64 to public addresses still works on an IPv6-only network."""
    base = int(_NAT64.network_address)
    found = []
    for text in networks:
        v4 = ipaddress.IPv4Network(text)
        found.append(f"{ipaddress.IPv6Address(base + int(v4.network_address))}/{96 + v4.prefixlen}")
    return tuple(found)


_METADATA = _metadata_addresses()
_IPV4 = [text for texts in _V4_FORBIDDEN.values() for text in texts] + [m for m in _METADATA if ":" not in m]

#: What the guard denies, by category (the README lists the same).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    **_V4_FORBIDDEN,
    "cloud metadata endpoints (authz.core.metadata_endpoints; Azure's and Oracle's are in no range above)": _METADATA,
    "IPv6 unspecified and loopback": ("::/127",),
    "IPv4-mapped IPv6 (any IPv4 address written as IPv6)": ("::ffff:0:0/96",),
    "NAT64 (64:ff9b::/96) of the IPv4 ranges above": _nat64(_IPV4),
    "IPv6 unique-local, AWS metadata fd00:ec2::254": ("fc00::/7",),
    "IPv6 link-local": ("fe80::/10",),
    "IPv6 site-local (deprecated)": ("fec0::/10",),
    "IPv6 multicast": ("ff00::/8",),
}


def forbidden_networks() -> list[IpNetwork]:
    """Every forbidden range, IPv4 first, merged where they overlap."""
    networks = [ipaddress.ip_network(text) for texts in FORBIDDEN.values() for text in texts]
    return _collapsed(networks)


def _collapsed(networks: Iterable[IpNetwork]) -> list[IpNetwork]:
    listed = list(networks)
    v4 = ipaddress.collapse_addresses(n for n in listed if isinstance(n, ipaddress.IPv4Network))
    v6 = ipaddress.collapse_addresses(n for n in listed if isinstance(n, ipaddress.IPv6Network))
    return [*v4, *v6]


def _with_mapped_forms(addresses: Iterable[IpAddress]) -> set[IpAddress]:
    """authz reads ``::ffff:a.b.c.d`` as ``a.b.c.d``: an exempt IPv4 address is exempt in both spellings."""
    found: set[IpAddress] = set()
    for address in addresses:
        found.add(address)
        if isinstance(address, ipaddress.IPv4Address):
            found.add(ipaddress.IPv6Address(f"::ffff:{address}"))
    return found


def guarded_networks(exempt: Iterable[IpAddress]) -> list[IpNetwork]:
    """The forbidden ranges less the exempt addresses: the ranges Envoy is given."""
    forbidden = forbidden_networks()
    v4 = [network for network in forbidden if isinstance(network, ipaddress.IPv4Network)]
    v6 = [network for network in forbidden if isinstance(network, ipaddress.IPv6Network)]
    for address in _with_mapped_forms(exempt):
        if isinstance(address, ipaddress.IPv4Address):
            v4 = _cut(v4, ipaddress.IPv4Network(address))
        else:
            v6 = _cut(v6, ipaddress.IPv6Network(address))
    return _collapsed([*v4, *v6])


def _cut(networks: list[_Network], hole: _Network) -> list[_Network]:
    """``networks`` less ``hole`` (one address)."""
    return [
        piece
        for network in networks
        for piece in (network.address_exclude(hole) if hole.subnet_of(network) else [network])
    ]


def resolved_address_filter(exempt: Iterable[IpAddress]) -> AddressMatcher:
    """``DnsCacheConfig.resolved_address_filter``: addresses in these ranges are dropped from answers."""
    return AddressMatcher(
        ranges=[
            XdsCidrRange(address_prefix=str(network.network_address), prefix_len=network.prefixlen)
            for network in guarded_networks(exempt)
        ]
    )


@dataclass(frozen=True, slots=True)
class Exemptions:
    """What the policies name: exact addresses (exempt) and wider blocks inside
    the forbidden ranges (not exempt: ``authz envoy-config`` says so)."""

    addresses: tuple[IpAddress, ...]
    blocks: tuple[str, ...]  # "policy:rule 10.1.0.0/16"


def exemptions_from(policy_set: PolicySet) -> Exemptions:
    """Every rule and break-glass exception of every policy, dry-run ones too:
    an address a policy names exactly is meant to be reached."""
    addresses: set[IpAddress] = set()
    blocks: list[str] = []
    forbidden = forbidden_networks()
    for loaded in policy_set.policies:
        policy = loaded.model
        rules: list[EgressRule | EgressException] = [*policy.spec.egress, *policy.spec.exceptions]
        for rule in rules:
            for host in rule.hosts:
                if host.kind == "network" and host.network is not None:
                    if any(host.network.overlaps(n) for n in forbidden if n.version == host.network.version):
                        blocks.append(f"{policy.metadata.name}:{rule.id} {host.network}")
                elif host.kind == "exact":
                    try:
                        addresses.add(ipaddress.ip_address(host.value))
                    except ValueError:
                        continue  # a name
    return Exemptions(tuple(sorted(addresses, key=lambda a: (a.version, a))), tuple(blocks))


def address_denied_reply() -> LocalReplyConfig:
    """HTTP and CONNECT: the DNS cache's denial, a 503 by default, becomes a
    403 naming the reason, the identity and the destination as the client
    wrote it (never the ranges or the policy); genuine DNS failures stay 503."""
    matches = ExpressionFilter(expression=f"response.code_details == '{ADDRESS_DENIED}'")
    body = {"reason": REASON, "identity": "%DOWNSTREAM_PEER_URI_SAN%", "destination": "%REQ(:AUTHORITY)%"}
    headers = {"x-egress-decision": "deny", "x-egress-reason": REASON}
    return LocalReplyConfig(
        mappers=[
            ResponseMapper(
                filter=AccessLogFilter(
                    extension_filter=ExtensionFilter(
                        name="envoy.access_loggers.extension_filters.cel",
                        typed_config=AnyMessage.pack(matches),
                    )
                ),
                status_code=403,
                body_format_override=SubstitutionFormatString(json_format=Struct.from_dict(body)),
                headers_to_add=[
                    HeaderValueOption(
                        header=HeaderValue(key=key, value=value),
                        append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
                    )
                    for key, value in headers.items()
                ],
            )
        ]
    )


def _upstream_in(network: str) -> Permission:
    parsed = ipaddress.ip_network(network)
    matcher = UpstreamIpPortMatcher(
        upstream_ip=CidrRange(address_prefix=str(parsed.network_address), prefix_len=parsed.prefixlen)
    )
    return Permission(
        matcher=TypedExtensionConfig(
            name="envoy.rbac.matchers.upstream_ip_port", typed_config=AnyMessage.pack(matcher)
        )
    )


def sni_guard_filter() -> tuple[str, AnyMessage]:
    """``envoy.filters.network.rbac`` after the SNI forward proxy (which saves
    the address it resolved): deny a connection with no address, i.e. one
    whose answer the DNS cache emptied (or that did not resolve). The cache
    already denies; this names the reason in the access log
    (``%CONNECTION_TERMINATION_DETAILS%``) and fails closed should the
    address go unsaved."""
    unknown = Permission(
        and_rules=PermissionSet(
            rules=[Permission(not_rule=_upstream_in("0.0.0.0/0")), Permission(not_rule=_upstream_in("::/0"))]
        )
    )
    rules = Rbac(
        action=RbacAction.DENY,
        policies={SNI_GUARD_POLICY: Policy(permissions=[unknown], principals=[Principal(any=True)])},
    )
    config = NetworkRbac(stat_prefix="sni_address_guard", rules=rules)
    return "envoy.filters.network.rbac", AnyMessage.pack(config)
