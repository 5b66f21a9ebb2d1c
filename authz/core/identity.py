"""SPIFFE IDs, parsed strictly: a malformed ID must never match a rule.

Follows the SPIFFE ID specification: scheme ``spiffe``, a lower-case trust
domain of ``[a-z0-9._-]``, path segments of ``[A-Za-z0-9._-]`` that are neither
empty nor ``.`` nor ``..``; no port, user info, query or fragment; at most 2048
bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "IdentityPattern",
    "InvalidSpiffeId",
    "SpiffeId",
    "identity_prefixes",
    "parse_identity_pattern",
    "parse_spiffe_id",
]

MAX_ID_LENGTH = 2048
MAX_TRUST_DOMAIN_LENGTH = 255
_SCHEME = "spiffe://"
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class InvalidSpiffeId(ValueError):
    """The text is not a SPIFFE ID (or identity pattern) in canonical form."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    path: tuple[str, ...]

    def __str__(self) -> str:
        return _format(self.trust_domain, self.path)

    def prefixes(self) -> list[str]:
        """The ``.../*`` pattern keys that cover this ID, longest first."""
        return [_format(self.trust_domain, self.path[:k]) for k in range(len(self.path) - 1, 0, -1)]


@dataclass(frozen=True, slots=True)
class IdentityPattern:
    """An exact SPIFFE ID, or every ID below a path (``spiffe://td/ns/x/*``)."""

    trust_domain: str
    path: tuple[str, ...]
    is_prefix: bool

    @property
    def key(self) -> str:
        """The ID (exact) or the path the prefix covers, without ``/*``."""
        return _format(self.trust_domain, self.path)

    def __str__(self) -> str:
        return self.key + "/*" if self.is_prefix else self.key

    def covers(self, identity: SpiffeId) -> bool:
        if identity.trust_domain != self.trust_domain:
            return False
        if not self.is_prefix:
            return identity.path == self.path
        n = len(self.path)
        return len(identity.path) > n and identity.path[:n] == self.path


def _format(trust_domain: str, path: tuple[str, ...]) -> str:
    return _SCHEME + trust_domain + "".join("/" + s for s in path)


@lru_cache(maxsize=65536)
def parse_spiffe_id(value: str) -> SpiffeId:
    """Parse ``value`` or raise InvalidSpiffeId saying what is wrong.

    Cached: a mesh has a bounded set of workload identities, each seen often.
    """
    if len(value.encode("utf-8", "surrogatepass")) > MAX_ID_LENGTH:
        raise InvalidSpiffeId(f"longer than {MAX_ID_LENGTH} bytes")
    if not value.startswith(_SCHEME):
        raise InvalidSpiffeId("scheme must be 'spiffe://'")
    rest = value[len(_SCHEME) :]
    trust_domain, slash, path_text = rest.partition("/")
    if not trust_domain:
        raise InvalidSpiffeId("empty trust domain")
    if len(trust_domain) > MAX_TRUST_DOMAIN_LENGTH:
        raise InvalidSpiffeId(f"trust domain longer than {MAX_TRUST_DOMAIN_LENGTH} characters")
    if _TRUST_DOMAIN.fullmatch(trust_domain) is None:
        if ":" in trust_domain:
            raise InvalidSpiffeId("trust domain must not carry a port")
        if "@" in trust_domain:
            raise InvalidSpiffeId("user info is not allowed")
        raise InvalidSpiffeId(
            f"trust domain {trust_domain!r} may hold only lower-case letters, digits, '.', '-' and '_'"
        )
    if not slash:
        return SpiffeId(trust_domain, ())
    segments = tuple(path_text.split("/"))
    for segment in segments:
        if not segment:
            raise InvalidSpiffeId("empty path segment (or trailing '/')")
        if segment in (".", ".."):
            raise InvalidSpiffeId(f"path segment {segment!r} is not allowed")
        if _SEGMENT.fullmatch(segment) is None:
            raise InvalidSpiffeId(
                f"path segment {segment!r} may hold only letters, digits, '.', '-' and '_'"
                " (no query, fragment or percent-encoding)"
            )
    return SpiffeId(trust_domain, segments)


@lru_cache(maxsize=65536)
def identity_prefixes(value: str) -> tuple[str, ...]:
    """The ``/*`` pattern keys covering ``value``, longest first; raises InvalidSpiffeId.

    Cached apart from parsing: with a prefix in policy or revocations, every
    check asks, and building the list cost 3 µs a check.
    """
    return tuple(parse_spiffe_id(value).prefixes())


def parse_identity_pattern(value: str) -> IdentityPattern:
    """Parse an exact ID or a ``/*`` prefix of at least one path segment."""
    if value.endswith("/*"):
        base = parse_spiffe_id(value[:-2])
        if not base.path:
            raise InvalidSpiffeId(
                "a whole trust domain is too broad: name at least one path segment before '/*'"
            )
        return IdentityPattern(base.trust_domain, base.path, is_prefix=True)
    if "*" in value:
        raise InvalidSpiffeId("'*' is allowed only as a final '/*' path segment")
    parsed = parse_spiffe_id(value)
    return IdentityPattern(parsed.trust_domain, parsed.path, is_prefix=False)
