"""The compiled policy: per-identity indexes that make a decision cost a few
dictionary lookups, whatever the number of services and rules."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from authz.core.decision import Mode
from authz.core.identity import identity_prefixes
from authz.core.rule import Rule

__all__ = ["CompiledPolicy", "HostIndex", "NetworkIndex", "Revocation", "ServicePolicy"]


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
class HostIndex:
    """Rules by destination host: exact names and IPs, ``*.`` suffixes, CIDR blocks."""

    exact: Mapping[str, tuple[Rule, ...]]
    wildcard: Mapping[str, tuple[Rule, ...]]  # by the suffix after "*."
    networks: NetworkIndex

    def rules(self) -> tuple[Rule, ...]:
        """Every rule in the index once, in the order first met (a rule with
        several hosts sits under each): for listing, never for a check."""
        groups = [*self.exact.values(), *self.wildcard.values()]
        groups += [rules for _, _, table in self.networks.buckets for rules in table.values()]
        found = {id(rule): rule for rules in groups for rule in rules}
        return tuple(found.values())

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
class ServicePolicy:
    """One service's egress policy: its rules indexed by destination host,
    and its break-glass exceptions (None when it has none)."""

    name: str
    owner: str
    change_ref: str | None
    mode: Mode
    zones: frozenset[str] | None
    allow_sni_host_mismatch: bool
    identities: tuple[str, ...]
    rules: tuple[Rule, ...]
    index: HostIndex
    exceptions: HostIndex | None = None

    @property
    def exact(self) -> Mapping[str, tuple[Rule, ...]]:
        return self.index.exact

    def candidates(self, host: str) -> tuple[Rule, ...]:
        return self.index.candidates(host)


@dataclass(frozen=True, slots=True, eq=False)
class Revocation:
    """A revoked identity (or ``/*`` prefix: a quarantined namespace). With
    ``allow_only``, it is contained rather than cut off: it may still reach
    those destinations, as far as its own policy allows them."""

    pattern: str
    source: str  # the EgressRevocation document's name
    reason: str
    by: str
    ticket: str | None
    at: float  # seconds since the epoch
    allow_only: HostIndex | None = None


@dataclass(frozen=True, slots=True, eq=False)
class CompiledPolicy:
    """``mode`` DRY_RUN is a zone-wide dry-run (``authz serve --mode
    dry-run``): every allowlist denial of every identity is relaxed."""

    version: str
    services: tuple[ServicePolicy, ...]
    by_identity: Mapping[str, ServicePolicy]
    by_prefix: Mapping[str, ServicePolicy]  # by the ID the "/*" pattern extends
    revoked: Mapping[str, Revocation] | None = None  # by exact ID, None when nothing is revoked
    revoked_prefix: Mapping[str, Revocation] | None = None  # by the ID the "/*" pattern extends
    mode: Mode = Mode.ENFORCE

    def service_for(self, identity: str) -> ServicePolicy | None:
        """The policy governing ``identity``: exact ID first, then the longest
        ``/*`` prefix. Raises InvalidSpiffeId for a malformed ID."""
        service = self.by_identity.get(identity)
        if service is not None:
            return service
        prefixes = identity_prefixes(identity)  # also validates: raises InvalidSpiffeId
        if self.by_prefix:
            for key in prefixes:
                service = self.by_prefix.get(key)
                if service is not None:
                    return service
        return None

    def revocation_for(self, identity: str) -> Revocation | None:
        """The revocation of ``identity``: exact ID first, then the longest ``/*`` prefix."""
        if self.revoked:
            found = self.revoked.get(identity)
            if found is not None:
                return found
        if self.revoked_prefix:
            for key in identity_prefixes(identity):
                found = self.revoked_prefix.get(key)
                if found is not None:
                    return found
        return None
