"""What the fuzz tests share: the check service over the example policies
(as `authz serve` runs it, without a transport), its independent judge, and
hypothesis strategies for CheckRequests: random attribute values, missing
fields, odd Unicode, very long and very many headers, IPv6 and IDN hosts,
ports out of range.

``make test`` runs each fuzz test for the default profile's examples (a few
seconds); ``make fuzz`` loads the ``fuzz`` profile (tests/conftest.py) for
many more.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from authz.ext_authz.attributes import GatewaySettings
from authz.ext_authz.check import CheckService
from authz.ext_authz.wire.ext_authz_pb2 import AttributeContext, CheckRequest
from authz.gateway.examples import copy_examples
from authz.policy import load_policy
from authz.policy.testcases import request_for
from authz.testing import check_request
from tests.ext_authz.oracle import Oracle

__all__ = ["CHECKS", "FUZZ", "HANG_SECONDS", "ORACLE", "SEEDS", "SERVICE"]

ZONE, GATEWAY = "eu-west-prod", "egress.eu-west-prod.example.org"
TD = "spiffe://prod.example.org"
FRONT = f"{TD}/ns/edge/sa/front-proxy"  # a proxy whose x-forwarded-client-cert is believed
SETTINGS = GatewaySettings.create(
    gateway_names=[GATEWAY], trusted_xfcc_peers=[FRONT], zone=ZONE, sni_port=443
)
# The check decides at the clock, and the examples are written as of one day
# (authz/gateway/examples.py): fuzz a copy moved to today, where their
# break-glass exception is open and the other has expired, whatever the date.
_EXAMPLES_TODAY = tempfile.TemporaryDirectory(prefix="fuzz-examples-")  # removed at exit
copy_examples(Path(_EXAMPLES_TODAY.name))
POLICY_SET, COMPILED = load_policy([_EXAMPLES_TODAY.name])
SERVICE = CheckService(SETTINGS, check_timeout=60.0)  # a generous budget: TIMEOUT denies are not the subject
SERVICE.policy = COMPILED
ORACLE = Oracle(POLICY_SET, COMPILED, SETTINGS)

# Each example takes milliseconds. Neither a deadline nor hypothesis's health
# checks (slow generation) are asserted: CI is a busy 2-core machine. A hang is
# caught by pytest-timeout's guard, HANG_SECONDS a test: far above the worst
# seen (a find() of 5,000 examples at 30 ms each), scaled to the profile's examples.
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck))
HANG_SECONDS = 300 + settings.default.max_examples // 10

# -- the parts of a request ------------------------------------------------------------

IDENTITIES = [
    f"{TD}/ns/payments/sa/payments-api", f"{TD}/ns/ci/sa/ci-runner", f"{TD}/ns/support/sa/support-jump",
    f"{TD}/ns/agents/sa/retrieval-agent", f"{TD}/ns/partners/sa/partner-sync",
    f"{TD}/ns/reporting/sa/exporter", f"{TD}/ns/analytics/sa/etl", f"{TD}/ns/analytics/sa/etl/x",
    f"{TD}/ns/ci/sa/unknown", "spiffe://staging.example.org/ns/ci/sa/ci-runner",
    f"{TD}/ns/ci/sa/../sa/ci-runner", f"{TD}/ns/ci//sa/ci-runner", "spiffe://prod.example.org:443/ns/ci/sa/ci-runner",
    f"{TD}/ns/ci/sa/ci%2Drunner", f"{TD}/ns/ci/sa/ci-runner/", "SPIFFE://prod.example.org/ns/ci/sa/ci-runner",
    f"{TD}/ns/ci/sa/ci-runner\x00", f"{TD}/ns/ci/sa/ci-runn\u0435r", FRONT, "", "client.example.com",
]  # fmt: skip
HOSTS = [
    "bank-gateway.example.com", "kms.eu-west-1.amazonaws.com", "registry.npmjs.org", "npmjs.org", "github.com",
    "objects.githubusercontent.com", "pypi.org", "files.pythonhosted.org", "login.idp.example.com",
    "pam.example.com", "grafana.monitoring.example.com", "tickets.example.com", "vectors.internal.example.org",
    "eu.api-provider.com", "a.b.api-provider.com", "api-provider.com", "api.fraud-scoring.example",
    "legacy.bank-gateway.example.com",
    "warehouse.internal.example.org", "bucket.s3.eu-west-1.amazonaws.com", "pastebin.com",
    "bank-gateway.example.com.evil.net", "evil.net", "169.254.169.254", "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]", "[fd00:ec2::254]", "fd00:ec2::254", "2852039166", "0xa9fea9fe", "0251.0376.0251.0376",
    "169.254.43518", "metadata.google.internal", "168.63.129.16", "[::1]", "127.0.0.1", "localhost",
    "[fe80::1%25eth0]", "xn--bcher-kva.example", "user@github.com", "github.com@evil.net",
]  # fmt: skip
METHODS = ["GET", "POST", "HEAD", "CONNECT", "get", "post", "DELETE", "PO\u017fT", "G\u0130T", "", " GET"]
PATHS = [
    "/", "/v1/payments/settle", "/v1/payments/../admin", "/v1/payments/%2e%2e/admin", "/v1/payments/..%2fadmin",
    "/v1/payments/./settle", "/v1/payments\\..\\admin", "/v2/orders", "/v2/../v1/x", "/v2/%2E%2E/x",
    "/v1/payments/settle?x=/../", "/v1/payments/settle#frag", "v1/payments/settle", "//v1/payments/settle", "",
    "*", "/v1/payments/\u2024\u2024/admin",
]  # fmt: skip
SCHEMES = ["https", "http", "HTTPS", "wss", "ftp", ""]
UNICODE_FORMS = {
    "fullwidth": lambda name: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in name),
    "ideographic stop": lambda name: name.replace(".", "\u3002"),
    "fullwidth stop": lambda name: name.replace(".", "\uff0e"),
    "kelvin": lambda name: name.replace("k", "\u212a"),
    "zero width": lambda name: name + "\u200b",
    "upper": str.upper,
    "trailing dot": lambda name: name + ".",
    "two trailing dots": lambda name: name + "..",
}


def _long(alphabet: st.SearchStrategy[str], most: int) -> st.SearchStrategy[str]:
    """A character repeated up to ``most`` times: long values without generating each character."""
    return st.builds(lambda c, n: c * n, alphabet, st.integers(0, most))


TEXT = st.text(max_size=40) | _long(st.characters(codec="utf-8"), 70_000)
HOST_NAMES = st.one_of(
    st.sampled_from(HOSTS),
    st.builds(lambda host, form: UNICODE_FORMS[form](host), st.sampled_from(HOSTS), st.sampled_from(sorted(UNICODE_FORMS))),
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.from_regex(r"[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){0,3}", fullmatch=True),
    TEXT,
)  # fmt: skip
PORTS = st.one_of(
    st.none(), st.sampled_from(["443", "80", "0443", "0", "65535", "65536", "99999", "-1", "+443", "\u0664\u0664\u0663", ""]),
    st.integers(0, 2**32).map(str),
)  # fmt: skip


def _authority(host: str, port: str | None) -> str:
    return host if port is None else f"{host}:{port}"


AUTHORITIES = st.builds(_authority, HOST_NAMES, PORTS) | TEXT
HEADER_NAMES = st.sampled_from(
    ["host", ":authority", "x-forwarded-client-cert", "traceparent", "tracestate", "user-agent", "x-request-id"]
) | st.text(max_size=20)  # fmt: skip
XFCC = st.builds(
    lambda uri, by: f'By={by};Hash=ab;URI={uri}', st.sampled_from(IDENTITIES), st.sampled_from([FRONT, *IDENTITIES])
) | st.builds(",".join, st.lists(st.text(max_size=30), max_size=5)) | TEXT  # fmt: skip
HEADERS = st.dictionaries(
    HEADER_NAMES, XFCC | TEXT | st.sampled_from(HOSTS), max_size=8
) | st.dictionaries(st.text(max_size=10), st.text(max_size=5), min_size=50, max_size=400)  # fmt: skip
PEER_PORTS = st.integers(0, 2**32 - 1)


@st.composite
def _random_checks(draw: st.DrawFn) -> CheckRequest:
    """Any field set or not, to anything."""
    check = CheckRequest()
    attributes = check.attributes
    if draw(st.booleans()):
        attributes.source.principal = draw(st.sampled_from(IDENTITIES) | TEXT)
    if draw(st.integers(0, 9)) == 0:
        attributes.source.certificate = draw(TEXT)
    if draw(st.booleans()):
        attributes.context_extensions["zone"] = draw(st.sampled_from([ZONE, "us-east-prod", ""]) | TEXT)
    if draw(st.booleans()):
        attributes.tls_session.sni = draw(HOST_NAMES | st.sampled_from([GATEWAY, GATEWAY.upper() + "."]))
    if draw(st.booleans()):
        attributes.destination.address.socket_address.address = "127.0.0.1"
        attributes.destination.address.socket_address.port_value = draw(PEER_PORTS)
    if draw(st.integers(0, 3)) == 0:
        return check  # the network filter: a TCP/TLS connection, only the SNI
    http = attributes.request.http
    http.method = draw(st.sampled_from(METHODS) | TEXT)
    if draw(st.integers(0, 5)):
        http.host = draw(AUTHORITIES)
    if draw(st.booleans()):
        http.path = draw(st.sampled_from(PATHS) | TEXT)
    if draw(st.booleans()):
        http.scheme = draw(st.sampled_from(SCHEMES) | TEXT)
    _add_headers(draw, http)
    return check


def _add_headers(draw: st.DrawFn, http: AttributeContext.HttpRequest) -> None:
    for key, value in draw(HEADERS).items():
        http.headers[key] = value
    for key, value in draw(st.lists(st.tuples(HEADER_NAMES, TEXT), max_size=4)):
        entry = http.header_map.headers.add()
        entry.key = key
        if draw(st.booleans()):
            entry.value = value
        else:  # bytes: not necessarily UTF-8
            entry.raw_value = draw(st.just(value.encode()) | st.binary(max_size=20))


@st.composite
def _near_misses(draw: st.DrawFn) -> CheckRequest:
    """A real request of the example policies' tests (allowed or denied), a
    few of its fields changed: the host spelled otherwise (Unicode forms
    included), another port, identity, method, path, SNI or headers."""
    check = CheckRequest.FromString(draw(st.sampled_from(SEEDS)))
    attributes = check.attributes
    http = attributes.request.http if attributes.request.HasField("http") else None
    named = http.host if http is not None else attributes.tls_session.sni
    host, _, port = named.rpartition(":") if named.count(":") == 1 else (named, "", "")
    if draw(st.integers(0, 2)) == 0:
        spelled = UNICODE_FORMS[draw(st.sampled_from(sorted(UNICODE_FORMS)))](host)
        host = draw(st.just(spelled) | HOST_NAMES)
    if draw(st.integers(0, 3)) == 0:
        port = draw(PORTS) or ""
    authority = f"{host}:{port}" if port else host
    if http is not None:
        http.host = authority
    elif draw(st.booleans()):
        attributes.tls_session.sni = host
    if draw(st.integers(0, 3)) == 0:
        attributes.source.principal = draw(st.sampled_from(IDENTITIES) | TEXT)
    if draw(st.integers(0, 4)) == 0:
        attributes.tls_session.sni = draw(st.just(host) | HOST_NAMES | st.just(GATEWAY))
    if draw(st.integers(0, 4)) == 0:
        attributes.context_extensions["zone"] = draw(st.sampled_from([ZONE, "us-east-prod", ""]) | TEXT)
    if http is not None:
        if draw(st.integers(0, 3)) == 0:
            http.method = draw(st.sampled_from(METHODS) | TEXT)
        if draw(st.integers(0, 3)) == 0:
            http.path = draw(st.sampled_from(PATHS) | TEXT)
        if draw(st.integers(0, 4)) == 0:
            http.scheme = draw(st.sampled_from(SCHEMES))
        if draw(st.integers(0, 3)) == 0:
            _add_headers(draw, http)
    return check


def _seeds() -> list[bytes]:
    """Real serialized CheckRequests, allowed and denied: every case of the
    example policies' tests as Envoy would send it, and the same with the
    headers, peer address and zone a gateway adds."""
    seeds = []
    for loaded in POLICY_SET.tests:
        for case in loaded.model.spec.cases:
            check = check_request(request_for(case))
            seeds.append(check.SerializeToString())
            attributes = check.attributes
            attributes.source.address.socket_address.address = "127.0.0.1"
            attributes.source.address.socket_address.port_value = 43210
            attributes.context_extensions["zone"] = ZONE
            if check.attributes.request.HasField("http"):
                http = attributes.request.http
                http.headers[":authority"] = http.host
                http.headers["user-agent"] = "curl/8.5.0"
                http.headers["x-forwarded-proto"] = "https"
                http.headers["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                http.protocol = "HTTP/1.1"
            seeds.append(check.SerializeToString())
    return seeds


SEEDS = _seeds()
CHECKS = _near_misses() | _random_checks()
