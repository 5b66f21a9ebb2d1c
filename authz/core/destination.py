"""Destination names and addresses in one canonical form, so that equal
destinations compare equal: lower case, no trailing dot, IDNs as punycode,
IP literals in their compressed form (IPv4-mapped IPv6 as IPv4).

Requests and policies are read differently. A request's host or SNI is
decided on the bytes the proxy forwards: plain ASCII only, folding nothing
but ASCII case and one trailing dot (:func:`normalize_host`). A policy may
name an internationalized domain in Unicode; it compiles to its A-label
(``xn--...``) through IDNA/UTS-46 (:func:`parse_host_pattern`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import idna

__all__ = [
    "DEFAULT_PORTS",
    "HostPattern",
    "InvalidHost",
    "IpNetwork",
    "normalize_host",
    "parse_host_pattern",
    "format_destination",
    "split_authority",
]

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The port a request without one goes to, by scheme.
DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443, "ws": 80, "wss": 443}

MAX_HOST_LENGTH = 253
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NAME_CHARACTERS = re.compile(r"[a-z0-9.-]+")
_IPV6_CHARACTERS = frozenset("0123456789abcdefABCDEF:.")
# Labels a resolver may read as a number (decimal, octal, hex): a name ending in
# one is an IPv4 address in disguise (``2852039166``, ``0xa9.0xfe.0xa9.0xfe``).
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")


class InvalidHost(ValueError):
    """The text is not a host name or IP literal."""


def _ip_literal(text: str) -> str | None:
    """The canonical IP literal, or None when ``text`` is not one."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if ":" not in text:
            raise InvalidHost("brackets hold only an IPv6 address")
    if ":" in text:
        if "%" in text:
            raise InvalidHost("IPv6 zone identifiers are not allowed")
        try:
            v6 = ipaddress.IPv6Address(text)
        except ValueError as exc:
            raise InvalidHost(f"not an IPv6 address: {exc}") from None
        mapped = v6.ipv4_mapped
        return str(mapped) if mapped is not None else str(v6)
    if text.endswith("."):
        text = text[:-1]
    if _NUMERIC_LABEL.fullmatch(text.rpartition(".")[2].lower()) is None:
        return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise InvalidHost(f"{text!r} ends in a numeric label but is not a dotted-quad IPv4 address") from None


def _host_name(text: str) -> str:
    """An ASCII host name, checked and in lower case without its trailing dot."""
    name = text[:-1] if text.endswith(".") else text
    if not name:
        raise InvalidHost("empty host")
    name = name.lower()
    if len(name) > MAX_HOST_LENGTH:
        raise InvalidHost(f"longer than {MAX_HOST_LENGTH} characters")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise InvalidHost("empty label")
        if _LABEL.fullmatch(label) is None:
            raise InvalidHost(f"label {label!r}: letters, digits and inner '-' only, 63 characters at most")
    return name


@lru_cache(maxsize=65536)
def normalize_host(text: str) -> str:
    """Canonical form of a request's host name or IP literal; raises InvalidHost.

    Plain ASCII only: the proxy forwards (and resolves) the bytes it was
    given, so a name that IDNA mapping would fold into another one (fullwidth
    letters, the ideographic full stop U+3002) is refused, never matched as
    that other name. ASCII case and one trailing dot do fold: DNS compares
    names case-insensitively (RFC 4343) and ``name.`` is the same absolute
    name as ``name``, so the proxy reaches the same destination either way.

    Cached, as a gateway sees the same names over and over; and a miss on a
    name already in canonical form (the usual case) is a few string tests.
    """
    if _is_canonical_name(text):
        return text
    if not text.isascii():
        raise InvalidHost("not plain ASCII: an internationalized name is sent as its A-label (xn--...)")
    ip = _ip_literal(text)
    return ip if ip is not None else _host_name(text)


def _policy_host(text: str) -> str:
    """Canonical form of a host written in policy: a Unicode name becomes its
    A-label (IDNA 2008 with UTS-46 mapping), then as :func:`normalize_host`."""
    if not text.isascii():
        try:
            text = idna.encode(text, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidHost(f"not a valid internationalized name: {exc}") from None
    return normalize_host(text)


def _is_canonical_name(text: str) -> bool:
    """Lower-case LDH labels of 1-63 characters, no trailing dot, and a last
    label that starts with a letter (so it cannot be read as a number)."""
    if len(text) > MAX_HOST_LENGTH or _NAME_CHARACTERS.fullmatch(text) is None:
        return False
    if ".." in text or ".-" in text or "-." in text or text[0] in ".-" or text[-1] in ".-":
        return False
    labels = text.split(".") if len(text) > 63 else None
    if labels is not None and max(map(len, labels)) > 63:
        return False
    return "a" <= text[text.rfind(".") + 1] <= "z"


def split_authority(authority: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` (IPv6 in brackets) into host and port."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise InvalidHost("unterminated '[' in authority")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise InvalidHost("junk after ']' in authority")
        port_text = rest[1:]
    elif authority.count(":") == 1:
        host, _, port_text = authority.partition(":")
    else:
        return authority, None
    if not port_text.isdigit() or not port_text.isascii() or not 0 < int(port_text) < 65536:
        raise InvalidHost(f"bad port {port_text!r} in authority")
    return host, int(port_text)


def format_destination(host: str, port: int | None) -> str:
    """``host:port``, an IPv6 host in brackets."""
    if ":" in host and _IPV6_CHARACTERS.issuperset(host):
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


HostKind = Literal["exact", "wildcard", "network"]


@dataclass(frozen=True, slots=True)
class HostPattern:
    """A destination in policy: an exact name or IP, ``*.suffix``, or a CIDR."""

    kind: HostKind
    value: str  # canonical name or IP; the suffix for wildcards; the CIDR text
    network: IpNetwork | None = None

    def __str__(self) -> str:
        return "*." + self.value if self.kind == "wildcard" else self.value


def parse_host_pattern(text: str) -> HostPattern:
    """Parse a policy host; raises InvalidHost saying what is wrong."""
    if not text:
        raise InvalidHost("empty host")
    if "/" in text:
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise InvalidHost(f"not a CIDR block: {exc}") from None
        if network.prefixlen == network.max_prefixlen:
            return HostPattern("exact", str(network.network_address))
        return HostPattern("network", str(network), network)
    if text.startswith("*."):
        suffix = _policy_host(text[2:])
        if _ip_literal(suffix) is not None:
            raise InvalidHost("a wildcard needs a domain name, not an IP address")
        if "." not in suffix:
            raise InvalidHost(f"'*.{suffix}' is too broad: a wildcard needs at least two labels after '*.'")
        return HostPattern("wildcard", suffix)
    if "*" in text:
        raise InvalidHost("'*' is allowed only as the whole first label ('*.example.com')")
    return HostPattern("exact", _policy_host(text))
