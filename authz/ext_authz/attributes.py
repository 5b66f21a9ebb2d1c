"""Envoy's CheckRequest into the engine's EgressRequest: who is calling
(SPIFFE ID from the mTLS peer) and where to (SNI, authority, port, method,
path), for both of Envoy's ext_authz filters.

Everything here reads untrusted input and must not raise on it: odd values
are passed on as they are, for the engine to deny with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import unquote

from authz.core.destination import DEFAULT_PORTS, InvalidHost, split_authority
from authz.core.request import EgressRequest
from authz.ext_authz.wire.ext_authz_pb2 import AttributeContext, CheckRequest

__all__ = ["GatewaySettings", "egress_request", "header", "parse_xfcc"]

_SPIFFE = "spiffe://"


def _folded(name: str) -> str:
    """ASCII case and one trailing dot folded away, as the engine folds host
    names; text that is not plain ASCII is left as it is (str.lower would fold
    the Kelvin sign into "k"), so it equals no ASCII gateway name."""
    name = name.removesuffix(".")
    return name.lower() if name.isascii() else name


def _name_set(names: Iterable[str]) -> frozenset[str]:
    return frozenset(map(_folded, names))


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """What the operator tells egress-authz about the gateway in front of it.

    ``gateway_names``: names clients use to reach the gateway itself; an SNI
    that is one of them names the gateway, not a destination, and is not
    compared with the HTTP host. ``trusted_xfcc_peers``: SPIFFE IDs of proxies
    whose ``x-forwarded-client-cert`` header is believed (none by default: any
    client can send that header). ``zone``: the zone when Envoy sets no
    ``context_extensions["zone"]``. ``sni_port``: the destination port of
    SNI-only (network filter) checks, when it is not the port the listener
    accepted the connection on. ``rate_limit_headers``: the gateway rate-limits
    on the identity, policy and rule authz sets on allowed requests.
    """

    gateway_names: frozenset[str] = field(default=frozenset())
    trusted_xfcc_peers: frozenset[str] = field(default=frozenset())
    zone: str | None = None
    sni_port: int | None = None
    rate_limit_headers: bool = False

    @classmethod
    def create(
        cls,
        gateway_names: Iterable[str] = (),
        trusted_xfcc_peers: Iterable[str] = (),
        zone: str | None = None,
        sni_port: int | None = None,
        rate_limit_headers: bool = False,
    ) -> GatewaySettings:
        return cls(
            _name_set(gateway_names), frozenset(trusted_xfcc_peers), zone, sni_port, rate_limit_headers
        )


def header(http: AttributeContext.HttpRequest, name: str) -> str | None:
    """A request header (``name`` in lower case) from ``headers`` or, when Envoy
    sends raw headers, ``header_map``; None when absent."""
    value = http.headers.get(name)
    if value is not None:
        return value
    for entry in http.header_map.headers:
        if entry.key.lower() == name:
            return entry.value or entry.raw_value.decode("utf-8", "replace")
    return None


def parse_xfcc(value: str) -> list[dict[str, str]]:
    """``x-forwarded-client-cert`` elements (one per hop, nearest last), each a
    mapping of its keys (By, Hash, URI, ...) to unquoted values."""
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    key, text, quoted, escaped = "", "", False, False
    for char in value + ",":
        if escaped:
            text, escaped = text + char, False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif quoted:
            text += char
        elif char == "=" and not key:
            key, text = text.strip(), ""
        elif char in ";,":
            if key:
                element[key] = text.strip()
            key, text = "", ""
            if char == ",":
                if element:
                    elements.append(element)
                element = {}
        else:
            text += char
    return elements


@lru_cache(maxsize=1024)
def _certificate_spiffe_id(certificate: str) -> str | None:
    """The one SPIFFE URI SAN of a URL-encoded PEM certificate, else None."""
    from cryptography import x509  # only for Envoys that send certificates, not principals

    try:
        parsed = x509.load_pem_x509_certificate(unquote(certificate).encode())
        names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = [
            uri
            for uri in names.get_values_for_type(x509.UniformResourceIdentifier)
            if uri.startswith(_SPIFFE)
        ]
    except (ValueError, x509.ExtensionNotFound):
        return None
    return uris[0] if len(uris) == 1 else None  # an SVID has exactly one


def _peer_identity(peer: AttributeContext.Peer) -> str | None:
    principal = peer.principal
    if principal.startswith(_SPIFFE):
        return principal
    if peer.certificate:
        from_certificate = _certificate_spiffe_id(peer.certificate)
        if from_certificate is not None:
            return from_certificate
    return principal or None


def _identity(attributes: AttributeContext, settings: GatewaySettings) -> str | None:
    identity = _peer_identity(attributes.source)
    if (
        identity is not None
        and identity in settings.trusted_xfcc_peers
        and attributes.request.HasField("http")
    ):
        forwarded = header(attributes.request.http, "x-forwarded-client-cert")
        if forwarded is not None:
            elements = parse_xfcc(forwarded)
            nearest = elements[-1] if elements else {}
            if nearest.get("By", identity) == identity:
                return nearest.get("URI") or None
            return None  # a trusted hop that forwards someone else's element: believe nobody
    return identity


def _listener_port(attributes: AttributeContext) -> int | None:
    address = attributes.destination.address
    if address.HasField("socket_address") and address.socket_address.port_value:
        return address.socket_address.port_value
    return None


def egress_request(check: CheckRequest, settings: GatewaySettings) -> EgressRequest:
    attributes = check.attributes
    request = attributes.request
    identity = _identity(attributes, settings)
    zone = attributes.context_extensions.get("zone") or settings.zone
    sni = attributes.tls_session.sni or None
    if not request.HasField("http"):  # the network filter: a TCP/TLS connection
        port = settings.sni_port or _listener_port(attributes)
        return EgressRequest(identity, None, port, sni, None, None, zone, None)

    http = request.http
    authority = http.host or header(http, ":authority") or header(http, "host") or ""
    try:
        host, port = split_authority(authority)
    except InvalidHost:
        host, port = authority, None  # the engine refuses it as INVALID_DESTINATION
    scheme = http.scheme
    if port is None and scheme.lower() not in DEFAULT_PORTS:
        port = _listener_port(attributes)
    if sni is not None and _folded(sni) in settings.gateway_names:
        sni = None  # the client named the gateway, not a destination
    return EgressRequest(
        identity, host or None, port, sni, http.method or None, http.path or None, zone, scheme or None
    )
