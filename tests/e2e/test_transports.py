"""The serving contract, held by every transport `authz serve` offers: the
same requests get the same answers and the same lifecycle, whether grpc.aio
or Envoy's own HTTP/2 (pyvoy) carries them."""

from __future__ import annotations

import shutil
import signal
import threading
from contextlib import AbstractContextManager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authz import EgressRequest
from authz.ext_authz.check import SERVICE_NAME
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest, CheckResponse
from authz.testing import check_request
from tests.e2e.conftest import EXAMPLES, Served, authz_serve, free_port, wait_serving

CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
GITHUB = EgressRequest(CI, sni="github.com", port=443)
PASTEBIN = EgressRequest(CI, sni="pastebin.com", port=443)
TRANSPORTS = ["grpcio", "pyvoy"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _stub(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        f"/{SERVICE_NAME}/Check",
        request_serializer=CheckRequest.SerializeToString,
        response_deserializer=CheckResponse.FromString,
    )


def _reason(response: CheckResponse) -> str:
    return str(dict(response.dynamic_metadata)["reason"])


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    copy = tmp_path / "policies"
    shutil.copytree(EXAMPLES, copy)
    return copy


def _serve(
    transport: str, policies: Path, *args: str, listen: str | None = None
) -> tuple[str, AbstractContextManager[Served]]:
    target = listen or f"127.0.0.1:{free_port()}"
    return target, authz_serve("--policy", str(policies), "--listen", target, "--transport", transport, *args)


def test_allows_denies_and_refuses_garbage(transport: str, policies: Path) -> None:
    target, serving = _serve(transport, policies)
    with serving as served:
        wait_serving(target)
        with grpc.insecure_channel(target) as channel:
            check = _stub(channel)
            allowed, denied = (
                check(check_request(GITHUB), timeout=5),
                check(check_request(PASTEBIN), timeout=5),
            )
            assert (allowed.status.code, _reason(allowed)) == (0, "ALLOWED_BY_RULE")
            assert (denied.status.code, _reason(denied)) == (7, "NO_MATCHING_RULE")
            with pytest.raises(grpc.RpcError) as caught:
                channel.unary_unary(f"/{SERVICE_NAME}/Check")(b"\xff\xff\xff", timeout=5)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert check(check_request(GITHUB), timeout=5).status.code == 0  # and it goes on serving
            with pytest.raises(grpc.RpcError) as unknown:
                channel.unary_unary("/no.such.Service/Method")(b"", timeout=5)
            assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert served.stop()[0] == 0


def test_a_check_past_its_budget_is_a_timeout_deny(transport: str, policies: Path) -> None:
    target, serving = _serve(transport, policies, "--check-timeout", "0")
    with serving as served:
        wait_serving(target)
        with grpc.insecure_channel(target) as channel:
            response = _stub(channel)(check_request(GITHUB), timeout=5)
        assert (response.status.code, _reason(response)) == (7, "TIMEOUT")
        assert served.stop()[0] == 0


def test_health_is_serving_then_not_serving_while_draining_and_the_exit_is_clean(
    transport: str, policies: Path
) -> None:
    target, serving = _serve(transport, policies, "--grace", "1")
    with serving as served:
        wait_serving(target)
        statuses: list[int] = []
        watching = threading.Event()
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status == 1
            with pytest.raises(grpc.RpcError) as unknown:
                health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

            def watch() -> None:
                try:
                    for reply in health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10):
                        statuses.append(reply.status)
                        watching.set()
                except grpc.RpcError:
                    pass  # the server went away at the end of the drain

            thread = threading.Thread(target=watch, daemon=True)
            thread.start()
            assert watching.wait(5)
            served.process.send_signal(signal.SIGTERM)
            code, stderr = served.wait(timeout=20)
            thread.join(10)
    assert code == 0, stderr
    assert statuses[0] == 1  # SERVING
    assert 2 in statuses  # NOT_SERVING once draining, before the end
    assert "stopped" in stderr


def test_a_unix_socket(transport: str, policies: Path, tmp_path: Path) -> None:
    target, serving = _serve(transport, policies, listen=f"unix:{tmp_path / 'authz.sock'}")
    with serving as served:
        wait_serving(target)
        with grpc.insecure_channel(target) as channel:
            assert _reason(_stub(channel)(check_request(GITHUB), timeout=5)) == "ALLOWED_BY_RULE"
        assert served.stop()[0] == 0


def test_two_workers_share_one_port(transport: str, policies: Path) -> None:
    target, serving = _serve(transport, policies, "--workers", "2")
    with serving as served:
        served.wait_for("all 2 workers serving")
        for _ in range(20):  # new connections land on either worker
            with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                assert _stub(channel)(check_request(GITHUB), timeout=5).status.code == 0
        code, stderr = served.stop()
    assert code == 0, stderr
    pids = {line.split("[")[1].split("]")[0] for line in stderr.splitlines() if "serving policy" in line}
    assert len(pids) == 2, stderr


def test_a_policy_change_is_served_and_sighup_rereads(transport: str, policies: Path) -> None:
    target, serving = _serve(transport, policies, "--no-watch")
    with serving as served:
        wait_serving(target)
        ci = policies / "ci-runner.yaml"
        ci.write_text(ci.read_text().replace("hosts: [github.com, ", "hosts: ["))
        with grpc.insecure_channel(target) as channel:
            check = _stub(channel)
            assert _reason(check(check_request(GITHUB), timeout=5)) == "ALLOWED_BY_RULE"  # not watched
            served.process.send_signal(signal.SIGHUP)
            served.wait_for("policy reloaded")
            assert _reason(check(check_request(GITHUB), timeout=5)) == "NO_MATCHING_RULE"
        assert served.stop()[0] == 0


def test_a_watched_change_is_served(transport: str, policies: Path) -> None:
    target, serving = _serve(transport, policies)
    with serving as served:
        wait_serving(target)
        ci = policies / "ci-runner.yaml"
        ci.write_text(ci.read_text().replace("hosts: [github.com, ", "hosts: ["))
        served.wait_for("policy reloaded")
        with grpc.insecure_channel(target) as channel:
            assert _reason(_stub(channel)(check_request(GITHUB), timeout=5)) == "NO_MATCHING_RULE"
        assert served.stop()[0] == 0
