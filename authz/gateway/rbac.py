"""Envoy's RBAC filters from the policies: a static floor under authz.

``authz envoy-config --rbac`` puts an ALLOW RBAC filter in front of each
ext_authz filter, one RBAC policy per egress rule (principals: the policy's
identities; permissions: the rule's hosts, ports, methods and paths). A
request that no rule of any policy could admit is refused by Envoy itself,
without an RPC; everything else goes on to authz, which still decides.

The design rule: the floor may only deny *more*. It must never deny a request
authz would allow (that would break legitimate traffic), and it may allow
what authz denies (authz denies it next). So wherever RBAC cannot say exactly
what authz says, the floor says something wider:

- hosts: authz folds ASCII case and one trailing dot into one name, and
  refuses a host or SNI that is not plain ASCII (INVALID_DESTINATION); the
  floor matches names case-insensitively (ASCII only, as Envoy's
  ``ignore_case`` does) with or without the dot, so it admits every spelling
  authz admits and no non-ASCII one. ``*.suffix`` is matched as
  a suffix (any number of labels), IP literals and CIDR blocks as "any IP
  literal, any port";
- ports: an HTTP request's destination port is in its authority
  (``host:port``) or, without one, the scheme's default (https 443, http 80)
  or else the listener's port, as authz reads it. Envoy's
  ``destination_port`` is the gateway's own listener port, never the
  destination's, so it is of no use here: the port is matched in the
  ``:authority`` header (a regular expression per port range) and, without
  one, by ``:scheme``. On the SNI listener the port authz checks is fixed
  per listener (``authz serve --sni-port``: where the dynamic forward proxy
  connects, ``--sni-destination-port`` 443, else the listener's port): a rule
  is in the network floor when its ports hold that port or the listener's;
- methods (``:method``, case-insensitively) and paths (``url_path``:
  Istio's exact, ``/prefix/*``, ``*suffix``; ``*`` is no constraint) are
  matched as authz matches them. A rule with HTTP constraints never admits a
  TLS connection, in authz as in the network floor;
- identities: exact SPIFFE IDs and ``/*`` prefixes of the peer certificate's
  URI SAN. An identity claimed by an exact ID and by a prefix is governed by
  one policy in authz, by the union of both in the floor.

What RBAC cannot express is not in the floor (``NOT_IN_FLOOR``); authz
enforces it on what the floor lets through.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from envoy_data_plane.envoy.config.rbac.v3 import (
    Permission,
    PermissionSet,
    Policy,
    Principal,
    PrincipalAuthenticated,
    Rbac,
    RbacAction,
)
from envoy_data_plane.envoy.config.route.v3 import HeaderMatcher
from envoy_data_plane.envoy.extensions.filters.http.rbac.v3 import Rbac as HttpRbac
from envoy_data_plane.envoy.extensions.filters.network.rbac.v3 import Rbac as NetworkRbac
from envoy_data_plane.envoy.type.matcher.v3 import PathMatcher, RegexMatcher, StringMatcher
from envoy_data_plane.google.protobuf import Any as AnyMessage

from authz.core.decision import Mode
from authz.core.destination import HostPattern
from authz.core.identity import IdentityPattern
from authz.core.rule import PathPattern
from authz.policy.load import PolicySet
from authz.policy.model import EgressException, EgressRule

__all__ = [
    "HTTP_RBAC",
    "NETWORK_RBAC",
    "NOT_IN_FLOOR",
    "Floor",
    "FloorPolicy",
    "floor_from",
    "http_filter",
    "network_filter",
    "port_alternatives",
]

HTTP_RBAC = "envoy.filters.http.rbac"
NETWORK_RBAC = "envoy.filters.network.rbac"
SNI_DESTINATION_PORT = 443  # where the SNI listener's dynamic forward proxy connects

NOT_IN_FLOOR = (
    "break-glass exceptions expire by themselves; RBAC has no clock: the floor admits their destinations"
    " until the next render, authz enforces the expiry",
    "dry-run policies: the floor allows all of their identities' traffic (it must not deny what dry-run"
    " only records); a zone-wide `authz serve --mode dry-run` needs no floor at all",
    "revocations and containment (`authz revoke`): a rendered floor would be stale; authz applies them"
    " at its next reload",
    "the metadata-endpoint guard, the SNI/Host mismatch (domain fronting) guard and malformed input:"
    " authz's job; the floor only matches names and IP literals loosely",
    "zones: authz checks the zone of each request",
    "identities forwarded in x-forwarded-client-cert (`authz serve --trust-xfcc-from`): the floor sees"
    " only the peer certificate; do not use --rbac with them",
    "telemetry: a request the floor denies reaches no decision log, span or metric of authz; Envoy's"
    " access log (`details`) and its rbac stats record it",
)

_MAX_ALTERNATIVES = 8  # per regular expression: Envoy refuses RE2 programs over 100 instructions
_IP_LITERAL = r"\[?[0-9A-Fa-f:.]+\]?(?::[0-9]+)?"  # IPv4, IPv6 (bracketed or not), any port
_WEB_SCHEMES = r"[Hh][Tt][Tt][Pp][Ss]?|[Ww][Ss][Ss]?"  # authz's DEFAULT_PORTS, any case


@dataclass(frozen=True, slots=True)
class FloorPolicy:
    """One RBAC policy: these identities may do what ``rule`` admits (or,
    ``rule`` None, anything: a dry-run policy)."""

    name: str
    identities: tuple[IdentityPattern, ...]
    rule: EgressRule | EgressException | None


@dataclass(frozen=True, slots=True)
class Floor:
    policies: tuple[FloorPolicy, ...]


def floor_from(policy_set: PolicySet) -> Floor:
    """A policy per rule and per break-glass exception; one allow-all per dry-run policy."""
    found: list[FloorPolicy] = []
    for loaded in policy_set.policies:
        policy = loaded.model
        name, identities = policy.metadata.name, tuple(policy.spec.identities)
        if policy.spec.mode is Mode.DRY_RUN:
            found.append(FloorPolicy(f"{name}:*", identities, None))
            continue
        rules: list[EgressRule | EgressException] = [*policy.spec.egress, *policy.spec.exceptions]
        for rule in rules:
            found.append(FloorPolicy(f"{name}:{rule.id}", identities, rule))
    return Floor(tuple(found))


# -- the numbers: a port range as a regular expression -------------------------


def _group(alternatives: Sequence[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 else "(?:" + "|".join(alternatives) + ")"


def _same_length(low: str, high: str) -> list[str]:
    """Alternatives matching the digit strings from ``low`` to ``high`` (as long as each other)."""
    if low == high:
        return [low]
    if len(low) == 1:
        return [f"[{low}-{high}]"]
    if low[0] == high[0]:
        return [low[0] + _group(_same_length(low[1:], high[1:]))]
    rest = len(low) - 1
    first, last = int(low[0]), int(high[0])
    head: list[str] = []
    tail: list[str] = []
    if low[1:] != "0" * rest:
        head.append(low[0] + _group(_same_length(low[1:], "9" * rest)))
        first += 1
    if high[1:] != "9" * rest:
        tail.append(high[0] + _group(_same_length("0" * rest, high[1:])))
        last -= 1
    if first <= last:
        digit = str(first) if first == last else f"[{first}-{last}]"
        head.append(digit + ("[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"))
    return head + tail


def port_alternatives(low: int, high: int) -> list[str]:
    """Regular expressions, one alternative each, for the decimal numbers ``low``-``high``
    written without leading zeros."""
    found: list[str] = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        start = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        end = min(high, 10**digits - 1)
        if start <= end:
            found += _same_length(str(start), str(end))
    return found


def _merged(ports: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ports):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


def _admits(ports: Iterable[tuple[int, int]], port: int) -> bool:
    return any(low <= port <= high for low, high in ports)


# -- permissions and principals ----------------------------------------------------


def _any_of(permissions: list[Permission]) -> Permission:
    return permissions[0] if len(permissions) == 1 else Permission(or_rules=PermissionSet(rules=permissions))


def _all_of(permissions: list[Permission]) -> Permission:
    return permissions[0] if len(permissions) == 1 else Permission(and_rules=PermissionSet(rules=permissions))


def _header(name: str, matcher: StringMatcher) -> Permission:
    return Permission(header=HeaderMatcher(name=name, string_match=matcher))


def _regex(pattern: str) -> StringMatcher:
    return StringMatcher(safe_regex=RegexMatcher(regex=pattern))


def _is_ip(host: HostPattern) -> bool:
    if host.kind == "network":
        return True
    try:
        ipaddress.ip_address(host.value)
    except ValueError:
        return False
    return True


def _name_matchers(host: HostPattern, port_separator: str) -> list[StringMatcher]:
    """A DNS name as written by a client: any case, one trailing dot or none;
    followed by ``port_separator`` (``":"``) when a port follows."""
    if host.kind == "exact":
        if port_separator:
            return [
                StringMatcher(prefix=host.value + dot + port_separator, ignore_case=True) for dot in ("", ".")
            ]
        return [StringMatcher(exact=host.value + dot, ignore_case=True) for dot in ("", ".")]
    suffix = "." + host.value
    if port_separator:  # "x.suffix:443": the port regex that goes with it pins the one colon
        return [StringMatcher(contains=suffix + dot + port_separator, ignore_case=True) for dot in ("", ".")]
    return [StringMatcher(suffix=suffix + dot, ignore_case=True) for dot in ("", ".")]


def _authority_ports(ports: Sequence[tuple[int, int]]) -> Permission:
    """``:authority`` is ``HOST:PORT`` with PORT one of ``ports`` (leading zeros allowed, as authz reads them)."""
    alternatives = [a for low, high in _merged(ports) for a in port_alternatives(low, high)]
    chunks = [alternatives[i : i + _MAX_ALTERNATIVES] for i in range(0, len(alternatives), _MAX_ALTERNATIVES)]
    return _any_of([_header(":authority", _regex(f"[^:]*:0*{_group(chunk)}")) for chunk in chunks])


def _default_port(ports: Sequence[tuple[int, int]], listener_port: int) -> Permission | None:
    """An authority without a port goes to the scheme's default port, or to the
    listener's when the scheme has none: as authz's attributes read it."""
    allowed: list[Permission] = []
    if _admits(ports, 443):
        allowed += [_header(":scheme", StringMatcher(exact=s, ignore_case=True)) for s in ("https", "wss")]
    if _admits(ports, 80):
        allowed += [_header(":scheme", StringMatcher(exact=s, ignore_case=True)) for s in ("http", "ws")]
    if _admits(ports, listener_port):
        allowed.append(Permission(not_rule=_header(":scheme", _regex(_WEB_SCHEMES))))
    return _any_of(allowed) if allowed else None


def _http_destination(rule: EgressRule | EgressException, listener_port: int) -> Permission:
    names = [host for host in rule.hosts if not _is_ip(host)]
    ways: list[Permission] = []
    default_port = _default_port(rule.ports, listener_port)
    if names and default_port is not None:
        bare = [_header(":authority", m) for host in names for m in _name_matchers(host, "")]
        ways.append(_all_of([_any_of(bare), default_port]))
    if names:
        with_port = [_header(":authority", m) for host in names for m in _name_matchers(host, ":")]
        ways.append(_all_of([_any_of(with_port), _authority_ports(rule.ports)]))
    if len(names) < len(rule.hosts):
        ways.append(_header(":authority", _regex(_IP_LITERAL)))
    return _any_of(ways)


def _path(pattern: PathPattern) -> PathMatcher:
    if pattern.kind == "exact":
        return PathMatcher(path=StringMatcher(exact=pattern.value))
    if pattern.kind == "prefix":
        return PathMatcher(path=StringMatcher(prefix=pattern.value))
    return PathMatcher(path=StringMatcher(suffix=pattern.value))


def _http_permission(rule: EgressRule | EgressException, listener_port: int) -> Permission:
    required = [_http_destination(rule, listener_port)]
    if rule.http is not None and rule.http.methods is not None:
        methods = [StringMatcher(exact=method, ignore_case=True) for method in rule.http.methods]
        required.append(_any_of([_header(":method", m) for m in methods]))
    paths = rule.http.paths if rule.http is not None else None
    if paths is not None and not any(p.kind == "any" for p in paths):
        required.append(_any_of([Permission(url_path=_path(p)) for p in paths]))
    return _all_of(required)


def _sni_permission(rule: EgressRule | EgressException) -> Permission:
    names: list[Permission] = []
    for host in rule.hosts:
        if _is_ip(host):
            names.append(Permission(requested_server_name=_regex(_IP_LITERAL)))
        else:
            names += [Permission(requested_server_name=m) for m in _name_matchers(host, "")]
    return _any_of(names)


def _principal(identity: IdentityPattern) -> Principal:
    name = (
        StringMatcher(prefix=identity.key + "/") if identity.is_prefix else StringMatcher(exact=identity.key)
    )
    return Principal(authenticated=PrincipalAuthenticated(principal_name=name))


def _rules(policies: dict[str, Policy]) -> Rbac:
    """ALLOW: a request no policy matches is denied (the default deny)."""
    return Rbac(action=RbacAction.ALLOW, policies=policies)


def http_filter(floor: Floor, listener_port: int) -> tuple[str, AnyMessage]:
    """``envoy.filters.http.rbac`` for an HTTP listener on ``listener_port``."""
    policies: dict[str, Policy] = {}
    for entry in floor.policies:
        principals = [_principal(identity) for identity in entry.identities]
        permission = (
            Permission(any=True) if entry.rule is None else _http_permission(entry.rule, listener_port)
        )
        policies[entry.name] = Policy(permissions=[permission], principals=principals)
    return HTTP_RBAC, AnyMessage.pack(HttpRbac(rules=_rules(policies)))


def network_filter(
    floor: Floor, sni_listener_port: int, destination_port: int = SNI_DESTINATION_PORT
) -> tuple[str, AnyMessage]:
    """``envoy.filters.network.rbac`` for the TLS-by-SNI listener: rules
    without HTTP constraints whose ports hold the port authz checks there
    (``destination_port``, where the forward proxy connects, or the listener's)."""
    policies: dict[str, Policy] = {}
    for entry in floor.policies:
        principals = [_principal(identity) for identity in entry.identities]
        if entry.rule is None:
            permission = Permission(any=True)
        elif entry.rule.http is not None or not (
            _admits(entry.rule.ports, destination_port) or _admits(entry.rule.ports, sni_listener_port)
        ):
            continue
        else:
            permission = _sni_permission(entry.rule)
        policies[entry.name] = Policy(permissions=[permission], principals=principals)
    return NETWORK_RBAC, AnyMessage.pack(NetworkRbac(stat_prefix="sni_floor", rules=_rules(policies)))
