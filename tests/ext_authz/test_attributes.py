from typing import Any, NamedTuple

import pytest
from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.service.auth.v3 import AttributeContext as EnvoyAttributes
from envoy_data_plane.envoy.service.auth.v3 import (
    AttributeContextHttpRequest,
    AttributeContextPeer,
    AttributeContextRequest,
    AttributeContextTlsSession,
)
from envoy_data_plane.envoy.service.auth.v3 import CheckRequest as EnvoyCheckRequest
from google.protobuf.message import DecodeError
from hypothesis import event, find, given
from hypothesis import strategies as st

from authz.core.request import EgressRequest
from authz.ext_authz.attributes import GatewaySettings, egress_request, header, parse_xfcc
from authz.ext_authz.check import INVALID_ARGUMENT
from authz.ext_authz.wire.ext_authz_pb2 import AttributeContext, CheckRequest
from tests.certificates import certificate_pem, envoy_encoded
from tests.ext_authz.fuzzing import FUZZ, ORACLE, SERVICE
from tests.finding import find_settings

CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
FRONT = "spiffe://prod.example.org/ns/edge/sa/front-proxy"
SETTINGS = GatewaySettings.create(gateway_names=["egress.zone.internal"], trusted_xfcc_peers=[FRONT])


def _http(**fields: str) -> CheckRequest:
    check = CheckRequest()
    check.attributes.source.principal = CI
    for key, value in fields.items():
        setattr(check.attributes.request.http, key, value)
    return check


def test_network_filter_request_is_sni_and_listener_port() -> None:
    check = CheckRequest()
    check.attributes.source.principal = CI
    check.attributes.tls_session.sni = "github.com"
    check.attributes.destination.address.socket_address.port_value = 443
    assert egress_request(check, SETTINGS) == EgressRequest(identity=CI, sni="github.com", port=443)
    configured = GatewaySettings.create(sni_port=443)
    check.attributes.destination.address.socket_address.port_value = 10443
    assert egress_request(check, configured).port == 443


def test_http_request_takes_host_port_method_path_and_zone() -> None:
    check = _http(host="registry.npmjs.org:10080", method="GET", path="/left-pad?x=1", scheme="https")
    check.attributes.context_extensions["zone"] = "eu-west-prod"
    assert egress_request(check, SETTINGS) == EgressRequest(
        identity=CI,
        host="registry.npmjs.org",
        port=10080,
        method="GET",
        path="/left-pad?x=1",
        zone="eu-west-prod",
        scheme="https",
    )


def test_port_falls_back_to_scheme_then_listener() -> None:
    request = egress_request(_http(host="github.com", method="GET", scheme="https"), SETTINGS)
    assert (request.port, request.scheme) == (None, "https")  # the engine applies the scheme's default
    check = _http(host="github.com", method="GET")
    check.attributes.destination.address.socket_address.port_value = 8080
    assert egress_request(check, SETTINGS).port == 8080


def test_connect_authority_and_ipv6() -> None:
    request = egress_request(_http(host="pastebin.com:18080", method="CONNECT"), SETTINGS)
    assert (request.host, request.port, request.method) == ("pastebin.com", 18080, "CONNECT")
    request = egress_request(_http(host="[fd00:ec2::254]:80", method="GET"), SETTINGS)
    assert (request.host, request.port) == ("[fd00:ec2::254]", 80)


def test_bad_authority_is_passed_on_for_the_engine_to_refuse() -> None:
    request = egress_request(_http(host="github.com:99999", method="GET"), SETTINGS)
    assert (request.host, request.port) == ("github.com:99999", None)


def test_host_from_headers_when_envoy_leaves_host_empty() -> None:
    check = _http(method="GET")
    check.attributes.request.http.headers[":authority"] = "github.com:443"
    assert egress_request(check, SETTINGS).host == "github.com"
    check = _http(method="GET")
    entry = check.attributes.request.http.header_map.headers.add()
    entry.key, entry.raw_value = "Host", b"pypi.org"
    assert egress_request(check, SETTINGS).host == "pypi.org"


def test_sni_naming_the_gateway_is_dropped_any_other_is_kept() -> None:
    check = _http(host="github.com", method="GET")
    check.attributes.tls_session.sni = "Egress.Zone.Internal."
    assert egress_request(check, SETTINGS).sni is None
    check.attributes.tls_session.sni = "kms.eu-west-1.amazonaws.com"
    assert egress_request(check, SETTINGS).sni == "kms.eu-west-1.amazonaws.com"


@pytest.mark.parametrize(
    "sni",
    [
        "egress.kube.internal..",  # one trailing dot folds, as in host names; two do not
        "egress.\u212aube.internal",  # the Kelvin sign, which str.lower() folds into "k"
        "egress.kube.internal\u3002",  # the ideographic full stop
        "\uff45gress.kube.internal",  # a fullwidth e
    ],
)
def test_only_the_gateway_name_in_ascii_is_the_gateway(sni: str) -> None:
    """Anything else is a destination SNI, for the engine to check (and refuse)."""
    settings = GatewaySettings.create(gateway_names=["Egress.Kube.Internal."])
    check = _http(host="github.com", method="GET")
    check.attributes.tls_session.sni = "EGRESS.kube.internal."
    assert egress_request(check, settings).sni is None
    check.attributes.tls_session.sni = sni
    assert egress_request(check, settings).sni == sni


def test_identity_from_the_peer_certificate_when_principal_is_not_spiffe() -> None:
    check = _http(host="github.com", method="GET")
    check.attributes.source.principal = "client.example.com"
    check.attributes.source.certificate = envoy_encoded(certificate_pem(CI, dns=("client.example.com",)))
    assert egress_request(check, SETTINGS).identity == CI


def test_certificate_without_exactly_one_spiffe_uri_gives_no_spiffe_identity() -> None:
    check = _http(host="github.com", method="GET")
    check.attributes.source.principal = ""
    check.attributes.source.certificate = envoy_encoded(
        certificate_pem(CI, "spiffe://prod.example.org/ns/x/sa/y")
    )
    assert egress_request(check, SETTINGS).identity is None
    check.attributes.source.certificate = "not a certificate"
    assert egress_request(check, SETTINGS).identity is None
    check.attributes.source.principal = "CN=legacy"
    assert egress_request(check, SETTINGS).identity == "CN=legacy"  # the engine: INVALID_IDENTITY


def test_no_peer_no_identity() -> None:
    check = _http(host="github.com", method="GET")
    check.attributes.source.principal = ""
    assert egress_request(check, SETTINGS).identity is None


def test_xfcc_is_ignored_unless_the_peer_is_a_trusted_hop() -> None:
    check = _http(host="github.com", method="GET")
    check.attributes.request.http.headers["x-forwarded-client-cert"] = (
        f"By={CI};URI=spiffe://prod.example.org/ns/x/sa/evil"
    )
    assert egress_request(check, SETTINGS).identity == CI
    check.attributes.source.principal = FRONT
    check.attributes.request.http.headers["x-forwarded-client-cert"] = (
        f'By=x;URI=a,By={FRONT};Hash=ab;URI="{CI}"'
    )
    assert egress_request(check, SETTINGS).identity == CI
    check.attributes.request.http.headers["x-forwarded-client-cert"] = f"By=spiffe://other/x;URI={CI}"
    assert egress_request(check, SETTINGS).identity is None
    assert egress_request(check, GatewaySettings()).identity == FRONT


def test_parse_xfcc() -> None:
    value = 'By=spiffe://a/b;Hash=468e;Subject="CN=x,O=y";URI=spiffe://a/c,By=spiffe://a/d;DNS=e.com'
    assert parse_xfcc(value) == [
        {"By": "spiffe://a/b", "Hash": "468e", "Subject": "CN=x,O=y", "URI": "spiffe://a/c"},
        {"By": "spiffe://a/d", "DNS": "e.com"},
    ]
    assert parse_xfcc('Subject="a\\"b"') == [{"Subject": 'a"b'}]
    assert parse_xfcc("") == []


def test_header_lookup() -> None:
    http = AttributeContext.HttpRequest()
    http.headers["traceparent"] = "00-abc"
    assert header(http, "traceparent") == "00-abc"
    assert header(http, "absent") is None


PEERS = st.builds(
    lambda principal, certificate: AttributeContext.Peer(principal=principal, certificate=certificate),
    st.text(max_size=40),
    st.text(max_size=40),
)


@given(
    PEERS,
    st.text(max_size=40),
    st.text(max_size=40),
    st.text(max_size=10),
    st.text(max_size=40),
    st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4),
    st.booleans(),
)
def test_never_raises_on_any_attributes(
    peer: AttributeContext.Peer,
    host: str,
    sni: str,
    method: str,
    path: str,
    headers: dict[str, str],
    http: bool,
) -> None:
    check = CheckRequest()
    check.attributes.source.CopyFrom(peer)
    check.attributes.tls_session.sni = sni
    if http:
        check.attributes.request.http.host = host
        check.attributes.request.http.method = method
        check.attributes.request.http.path = path
        check.attributes.request.http.headers.update(headers)
    egress_request(check, SETTINGS)


# -- bytes off the wire -------------------------------------------------------------------------
# What Envoy sends that egress_request reads, written with an independent encoder (envoy-data-plane,
# Envoy's full schema), and what the request must then be, from the documented rules: the identity
# is the peer's principal (no certificate, no x-forwarded-client-cert here), the zone Envoy's
# context_extensions["zone"], the SNI as sent unless an HTTP request's SNI names the gateway; an
# HTTP request's host and port are its authority's, else the scheme's default port (left for the
# engine), else the listener's; a connection (no HTTP request) has the SNI and the listener's port.


class Authority(NamedTuple):
    text: str
    host: str | None  # what egress_request must make of it: the text itself when it is no host[:port]
    port: int | None


class Http(NamedTuple):
    method: str
    authority: Authority
    path: str
    scheme: str


class Sent(NamedTuple):
    principal: str
    sni: tuple[str, bool]  # and whether it names the gateway (egress.zone.internal)
    listener_port: int | None
    extensions: dict[str, str]
    http: Http | None


NAMES = st.from_regex(r"[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){0,3}", fullmatch=True)
IPV6 = st.ip_addresses(v=6).map(str)
VALID_PORTS = st.integers(1, 65535)
BAD_PORTS = st.sampled_from(
    ["0", "65536", "99999", "", "x", "+1", "-1", "0x1bb", "\u0664\u0664\u0663", "443 "]
)
AUTHORITIES = st.one_of(
    st.just(Authority("", None, None)),
    NAMES.map(lambda name: Authority(name, name, None)),
    st.builds(lambda name, port: Authority(f"{name}:{port}", name, port), NAMES, VALID_PORTS),
    VALID_PORTS.map(lambda port: Authority(f":{port}", None, port)),
    IPV6.map(lambda ip: Authority(ip, ip, None)),  # bare: more than one ':', no port in it
    IPV6.map(lambda ip: Authority(f"[{ip}]", f"[{ip}]", None)),
    st.builds(lambda ip, port: Authority(f"[{ip}]:{port}", f"[{ip}]", port), IPV6, VALID_PORTS),
    st.builds(lambda name, bad: Authority(f"{name}:{bad}", f"{name}:{bad}", None), NAMES, BAD_PORTS),
    st.builds(lambda ip, junk: Authority(f"[{ip}]{junk}", f"[{ip}]{junk}", None), IPV6, st.sampled_from(["x", ":", ":0", ":99999"])),
    st.sampled_from(["[::1", "[fd00::1"]).map(lambda text: Authority(text, text, None)),  # unterminated
)  # fmt: skip
NOT_THE_GATEWAY = st.text(max_size=30).filter(lambda text: "egress" not in text.lower())
SNIS = st.one_of(
    st.sampled_from(["egress.zone.internal", "EGRESS.Zone.Internal", "egress.zone.internal."]).map(lambda s: (s, True)),
    st.sampled_from(["", "github.com", "egress.zone.internal..", "egress.zone.internal\u3002", "\uff45gress.zone.internal"])
    .map(lambda s: (s, False)),
    NOT_THE_GATEWAY.map(lambda s: (s, False)),
)  # fmt: skip
SENT = st.builds(
    Sent,
    principal=st.sampled_from([CI, FRONT, "", "CN=legacy", "client.example.com"]) | st.text(max_size=40),
    sni=SNIS,
    listener_port=st.none() | VALID_PORTS,  # Envoy's SocketAddress has it in a oneof: 0 would be sent
    extensions=st.dictionaries(st.sampled_from(["zone", "other"]) | st.text(max_size=8), st.text(max_size=20), max_size=3),
    http=st.none() | st.builds(
        Http,
        method=st.sampled_from(["GET", "POST", "CONNECT", ""]) | st.text(max_size=10),
        authority=AUTHORITIES,
        path=st.sampled_from(["/", "/v1/x?y=1", ""]) | st.text(max_size=40),
        scheme=st.sampled_from(["https", "HTTPS", "http", "wss", "ws", "ftp", ""]) | st.text(max_size=8),
    ),
)  # fmt: skip


def _expected(sent: Sent) -> EgressRequest:
    identity = sent.principal or None
    zone = sent.extensions.get("zone") or None
    sni, names_gateway = sent.sni
    if sent.http is None:
        return EgressRequest(identity, None, sent.listener_port, sni or None, None, None, zone, None)
    http = sent.http
    port = http.authority.port
    if port is None and http.scheme.lower() not in ("http", "https", "ws", "wss"):
        port = sent.listener_port
    sni = None if names_gateway else sni or None
    return EgressRequest(
        identity, http.authority.host, port, sni, http.method or None, http.path or None, zone, http.scheme or None
    )  # fmt: skip


def _encoded(sent: Sent) -> bytes:
    http = sent.http
    attributes = EnvoyAttributes(
        source=AttributeContextPeer(principal=sent.principal),
        destination=(
            AttributeContextPeer(address=Address(socket_address=SocketAddress(address="10.0.0.1", port_value=sent.listener_port)))
            if sent.listener_port is not None else None
        ),
        request=(
            AttributeContextRequest(http=AttributeContextHttpRequest(
                method=http.method, host=http.authority.text, path=http.path, scheme=http.scheme
            ))
            if http is not None else None
        ),
        context_extensions=sent.extensions,
        tls_session=AttributeContextTlsSession(sni=sent.sni[0]),
    )  # fmt: skip
    return bytes(EnvoyCheckRequest(attributes=attributes))


def _merged(first: Sent, second: Sent) -> Sent:
    """Two messages one after the other are one: the second's fields where it sends them (proto3:
    those that are not empty), the first's elsewhere; maps key by key; messages field by field."""
    http = first.http or second.http
    if first.http is not None and second.http is not None:
        a, b = first.http, second.http
        http = Http(
            b.method or a.method,
            b.authority if b.authority.text else a.authority,
            b.path or a.path,
            b.scheme or a.scheme,
        )
    return Sent(
        second.principal or first.principal,
        second.sni if second.sni[0] else first.sni,
        first.listener_port if second.listener_port is None else second.listener_port,
        {**first.extensions, **second.extensions},
        http,
    )  # fmt: skip


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


@st.composite
def _unknown_field(draw: st.DrawFn) -> bytes:
    """A well-formed field CheckRequest does not have (it has only field 1): skipped, whatever it holds."""
    number = draw(st.integers(2, 2**29 - 1).filter(lambda n: not 19000 <= n <= 19999))
    wire_type = draw(st.sampled_from([0, 1, 2, 5]))
    if wire_type == 0:
        payload = _varint(draw(st.integers(0, 2**64 - 1)))
    elif wire_type == 2:
        data = draw(st.binary(max_size=30))
        payload = _varint(len(data)) + data
    else:  # fixed64, fixed32
        payload = draw(st.binary(min_size=8 if wire_type == 1 else 4, max_size=8 if wire_type == 1 else 4))
    return _varint(number << 3 | wire_type) + payload


REFUSED = "refused"  # the bytes are no CheckRequest: DecodeError, and the service answers INVALID_ARGUMENT
JUDGED = "judged"  # anything may come of them: refused as above, or a check the independent oracle judges


class Case(NamedTuple):
    kind: str
    sent: Sent | None  # what was encoded (None: arbitrary bytes)
    data: bytes
    expected: EgressRequest | str


@st.composite
def _cases(draw: st.DrawFn) -> Case:
    sent = draw(SENT)
    data = _encoded(sent)
    kind = draw(
        st.sampled_from(["encoded", "two in a row", "unknown field", "cut short", "flipped", "arbitrary"])
    )
    if kind == "encoded":
        return Case(kind, sent, data, _expected(sent))
    if kind == "two in a row":
        second = draw(SENT)
        return Case(kind, sent, data + _encoded(second), _expected(_merged(sent, second)))
    if kind == "unknown field":
        extra = draw(_unknown_field())
        return Case(kind, sent, draw(st.sampled_from([extra + data, data + extra])), _expected(sent))
    if kind == "cut short":
        # CheckRequest's one field, attributes, is a length-delimited message: cut anywhere, it is cut.
        return Case(kind, sent, data[: draw(st.integers(1, len(data) - 1))], REFUSED)
    if kind == "flipped":
        at, bit = draw(st.integers(0, len(data) - 1)), draw(st.integers(0, 7))
        return Case(kind, sent, data[:at] + bytes([data[at] ^ 1 << bit]) + data[at + 1 :], JUDGED)
    return Case(kind, None, draw(st.binary(max_size=200)), JUDGED)


CASES = _cases()


def _decodes(data: bytes) -> bool:
    try:
        CheckRequest.FromString(data)
    except DecodeError:
        return False
    return True


@FUZZ
@given(CASES)
def test_bytes_make_the_request_they_encode_or_are_refused_never_allowed(case: Case) -> None:
    event(f"{case.kind}: {'decodes' if _decodes(case.data) else 'refused'}")
    if isinstance(case.expected, EgressRequest):
        assert egress_request(CheckRequest.FromString(case.data), SETTINGS) == case.expected
        return
    if case.expected == REFUSED or not _decodes(case.data):
        with pytest.raises(DecodeError):
            CheckRequest.FromString(case.data)
        outcome = SERVICE.check(case.data, None)
        assert (outcome.status, outcome.body) == (INVALID_ARGUMENT, b""), outcome  # no response, no allow
        return
    assert isinstance(egress_request(CheckRequest.FromString(case.data), SETTINGS), EgressRequest)
    assert ORACLE.judge(case.data, SERVICE.check(case.data, None)) is not None  # every allow is granted


# The first example found will do. Each of these comes up in 1 of 17 examples or more (measured
# over 3,000), so 2,000 examples miss one about once in e^120 runs. (Arbitrary bytes that decode,
# other than none at all, come up in 1 of 230: the flipped ones stand for them.)
FIND = find_settings(2000)


@pytest.mark.parametrize(
    "wanted",
    [
        pytest.param(lambda case: case.kind == "encoded" and case.sent.http and case.expected.identity and case.expected.host, id="an HTTP request with an identity"),
        pytest.param(lambda case: case.kind == "encoded" and not case.sent.http and case.expected.sni, id="a connection with an SNI"),
        pytest.param(lambda case: case.kind == "two in a row" and case.expected.host, id="two in a row"),
        pytest.param(lambda case: case.kind == "unknown field", id="an unknown field"),
        pytest.param(lambda case: case.kind == "cut short", id="cut short"),
        pytest.param(lambda case: case.kind == "flipped" and _decodes(case.data), id="flipped, and decodes"),
        pytest.param(lambda case: case.kind == "flipped" and not _decodes(case.data), id="flipped, and refused"),
        pytest.param(lambda case: case.kind == "arbitrary" and not _decodes(case.data), id="arbitrary, and refused"),
    ],
)  # fmt: skip
def test_the_bytes_reach_each_answer(wanted: Any) -> None:
    """The property above asserts each of its answers only if its bytes reach them."""
    assert wanted(find(CASES, wanted, settings=FIND))
