"""The compiled policy: per-identity indexes that make a decision cost a few
dictionary lookups, whatever the number of services and rules."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from authz.core.decision import Mode
from authz.core.identity import parse_spiffe_id
from authz.core.rule import Rule

__all__ = ["CompiledPolicy", "NetworkIndex", "ServicePolicy"]


@dataclass(frozen=True, slots=True, eq=False)
class NetworkIndex:
    """CIDR rules bucketed by prefix length: a lookup costs one probe per
    distinct prefix length in use, longest first, not one per rule."""

    # (ip version, prefix length, {network address >> host bits: rules})
    buckets: tuple[tuple[int, int, Mapping[int, tuple[Rule, ...]]], ...] = ()

    def lookup(self, host: str) -> tuple[Rule, ...]:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return ()
        value, width = int(address), address.max_prefixlen
        found: list[Rule] = []
        for version, prefixlen, table in self.buckets:
            if version == address.version:
                found += table.get(value >> (width - prefixlen), ())
        return tuple(found)


@dataclass(frozen=True, slots=True, eq=False)
class ServicePolicy:
    """One service's egress policy, indexed by destination host."""

    name: str
    owner: str
    change_ref: str | None
    mode: Mode
    zones: frozenset[str] | None
    allow_sni_host_mismatch: bool
    identities: tuple[str, ...]
    rules: tuple[Rule, ...]
    exact: Mapping[str, tuple[Rule, ...]]
    wildcard: Mapping[str, tuple[Rule, ...]]  # by the suffix after "*."
    networks: NetworkIndex

    def candidates(self, host: str) -> tuple[Rule, ...]:
        """Rules whose host matches, most specific first: exact, ``*.``, CIDR."""
        found = self.exact.get(host, ())
        if self.wildcard:
            parent = host.partition(".")[2]
            if parent in self.wildcard:
                found += self.wildcard[parent]
        if self.networks.buckets:
            found += self.networks.lookup(host)
        return found


@dataclass(frozen=True, slots=True, eq=False)
class CompiledPolicy:
    version: str
    services: tuple[ServicePolicy, ...]
    by_identity: Mapping[str, ServicePolicy]
    by_prefix: Mapping[str, ServicePolicy]  # by the ID the "/*" pattern extends

    def service_for(self, identity: str) -> ServicePolicy | None:
        """The policy governing ``identity``: exact ID first, then the longest
        ``/*`` prefix. Raises InvalidSpiffeId for a malformed ID."""
        service = self.by_identity.get(identity)
        if service is not None:
            return service
        parsed = parse_spiffe_id(identity)
        if self.by_prefix:
            for key in parsed.prefixes():
                service = self.by_prefix.get(key)
                if service is not None:
                    return service
        return None
