import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.core.request import EgressRequest
from authz.ext_authz.attributes import GatewaySettings, egress_request, header, parse_xfcc
from authz.ext_authz.wire.ext_authz_pb2 import AttributeContext, CheckRequest
from tests.certificates import certificate_pem, envoy_encoded

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


@given(st.binary(max_size=200))
def test_arbitrary_bytes_either_fail_to_decode_or_make_a_request(data: bytes) -> None:
    try:
        check = CheckRequest.FromString(data)
    except Exception:  # DecodeError: the server answers INVALID_ARGUMENT
        return
    assert isinstance(egress_request(check, SETTINGS), EgressRequest)
