"""The server in-process, over real gRPC channels on 127.0.0.1."""

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from authz import EgressRequest, Reason, evaluate
from authz.ext_authz.attributes import GatewaySettings
from authz.ext_authz.grpcio_transport import GrpcioTransport
from authz.ext_authz.server import SERVICE_NAME, ServeConfig, Server
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest, CheckResponse
from authz.policy import load_paths, load_policy
from authz.policy.testcases import request_for
from authz.telemetry import Telemetry, TelemetryConfig
from authz.testing import check_request
from tests.paths import EXAMPLES

CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
METHOD = f"/{SERVICE_NAME}/Check"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def _config(**changes: object) -> ServeConfig:
    fields: dict[str, object] = {
        "policy_paths": (str(EXAMPLES),),
        "listen": "127.0.0.1:0",
        "grace_seconds": 2.0,
    }
    return ServeConfig(**{**fields, **changes})  # type: ignore[arg-type]


class Running:
    def __init__(self, server: Server, port: int) -> None:
        self.server = server
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.check = self.channel.unary_unary(
            METHOD,
            request_serializer=CheckRequest.SerializeToString,
            response_deserializer=CheckResponse.FromString,
        )
        self.raw = self.channel.unary_unary(METHOD)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def health_of(self, service: str = SERVICE_NAME) -> int:
        response = await self.health.Check(health_pb2.HealthCheckRequest(service=service))
        return int(response.status)

    async def decide(self, request: EgressRequest) -> CheckResponse:
        response: CheckResponse = await self.check(check_request(request), timeout=5)
        return response


@asynccontextmanager
async def serving(
    config: ServeConfig, telemetry: Telemetry | None = None, *, load: bool = True
) -> AsyncIterator[Running]:
    server = Server(config, telemetry)
    started = Running(server, await server.start())
    if load:
        await server.load()
    try:
        yield started
    finally:
        await started.channel.close()
        await server.stop(0)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    async with serving(_config()) as started:
        yield started


def _metadata(response: CheckResponse) -> dict[str, object]:
    return dict(response.dynamic_metadata)


async def test_every_example_case_gets_the_engine_decision_over_grpc(running: Running) -> None:
    policy_set, compiled = load_policy([EXAMPLES])
    # Cases with `at:` are judged at another instant than the server's clock.
    cases = [case for loaded in policy_set.tests for case in loaded.model.spec.cases if case.at is None]
    assert len(cases) == 40
    for case in cases:
        request = request_for(case)
        expected = evaluate(compiled, request)
        response = await running.decide(request)
        metadata = _metadata(response)
        assert (response.status.code == 0) is expected.allowed, case.name
        assert metadata["reason"] == expected.reason, case.name
        assert metadata.get("rule") == expected.rule, case.name
        assert metadata["verdict"] == expected.verdict, case.name
        if not expected.allowed:
            assert response.denied_response.status.code == 403
            body = json.loads(response.denied_response.body)
            assert body["decision_id"] == metadata["decision_id"]


async def test_tcp_and_http_shapes(running: Running) -> None:
    tcp = await running.decide(EgressRequest(CI, sni="github.com", port=443))
    assert tcp.status.code == 0
    assert not tcp.HasField("denied_response")
    http = await running.decide(EgressRequest(CI, "pypi.org", 443, method="GET", path="/simple/"))
    assert http.ok_response.headers[0].header.key == "x-egress-decision-id"
    assert http.ok_response.headers[0].header.value == _metadata(http)["decision_id"]


async def test_decision_ids_are_unique(running: Running) -> None:
    ids = {
        _metadata(await running.decide(EgressRequest(CI, sni="github.com", port=443)))["decision_id"]
        for _ in range(20)
    }
    assert len(ids) == 20


async def test_garbage_is_invalid_argument_and_the_server_keeps_serving(running: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.raw(b"\xff\xff\xff\xff\xff")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    empty = await running.raw(b"")  # a valid, empty CheckRequest: no identity
    assert _metadata(CheckResponse.FromString(empty))["reason"] == Reason.NO_IDENTITY
    assert (await running.decide(EgressRequest(CI, sni="github.com", port=443))).status.code == 0


async def test_internal_error_fails_closed_and_is_logged_once(
    running: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("authz.ext_authz.check.evaluate", broken)
    with caplog.at_level(logging.ERROR, logger="authz.server"):
        response = await running.decide(EgressRequest(CI, sni="github.com", port=443))
    metadata = _metadata(response)
    assert response.status.code == 7
    assert metadata["reason"] == Reason.INTERNAL_ERROR
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(metadata["decision_id"]) in errors[0].getMessage()
    assert (await running.decide(EgressRequest(CI, sni="github.com", port=443))).status.code == 7


async def test_check_past_its_deadline_is_a_timeout_deny() -> None:
    async with serving(_config(check_timeout=0.0)) as started:
        response = await started.decide(EgressRequest(CI, sni="github.com", port=443))
        assert response.status.code == 7
        assert _metadata(response)["reason"] == Reason.TIMEOUT


async def test_health_not_serving_until_loaded_then_serving_then_draining() -> None:
    async with serving(_config(), load=False) as started:
        assert await started.health_of() == NOT_SERVING
        assert await started.health_of("") == NOT_SERVING
        before = await started.decide(EgressRequest(CI, sni="github.com", port=443))
        assert _metadata(before)["reason"] == Reason.NO_POLICY
        await started.server.load()
        assert await started.health_of() == SERVING
        assert await started.health_of("") == SERVING
        started.server.health.drain()
        assert await started.health_of() == NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await started.health_of("no.such.Service")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_envoy_service_and_can_be_turned_off() -> None:
    for enabled in (True, False):
        async with serving(_config(reflection=enabled)) as started:
            stub = reflection_pb2_grpc.ServerReflectionStub(started.channel)
            requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            if enabled:
                (reply,) = [reply async for reply in stub.ServerReflectionInfo(requests)]
                names = {service.name for service in reply.list_services_response.service}
                assert names == {
                    SERVICE_NAME,
                    "grpc.health.v1.Health",
                    "grpc.reflection.v1alpha.ServerReflection",
                }
            else:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    _ = [reply async for reply in stub.ServerReflectionInfo(requests)]
                assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def _until_refused(started: Running, request: EgressRequest, timeout: float = 10.0) -> grpc.StatusCode:
    """New calls until one is refused (the drain has begun); its status. Bounded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await started.check(check_request(request), timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
        assert asyncio.get_running_loop().time() < deadline, (
            f"new calls still answered {timeout} s into the drain"
        )
        await asyncio.sleep(0.01)


async def test_shutdown_lets_in_flight_checks_finish_and_refuses_new_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    check = GrpcioTransport._check

    async def first_held(
        self: GrpcioTransport, data: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        if not entered.is_set():  # the first call stays in flight until the test lets it go
            entered.set()
            await release.wait()
        return await check(self, data, context)

    graces: list[float] = []
    stop = GrpcioTransport.stop

    async def recorded_stop(self: GrpcioTransport, grace: float) -> None:
        graces.append(grace)
        await stop(self, grace)

    monkeypatch.setattr(GrpcioTransport, "_check", first_held)
    monkeypatch.setattr(GrpcioTransport, "stop", recorded_stop)
    github = EgressRequest(CI, sni="github.com", port=443)
    # A grace (and deadline) far beyond the test's: the held call cut short would fail it, not pass it.
    async with serving(_config(grace_seconds=60.0)) as started:
        in_flight = asyncio.ensure_future(started.check(check_request(github), timeout=60))
        await asyncio.wait_for(entered.wait(), 5)
        stopping = asyncio.ensure_future(started.server.stop())
        # A call that reaches the server as it shuts down is cancelled; later ones find no listener.
        assert await _until_refused(started, github) in (
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.UNAVAILABLE,
        )
        assert not in_flight.done()  # in flight while the server refuses new calls...
        assert not stopping.done()  # ...and the drain waits for it
        release.set()
        response = await asyncio.wait_for(in_flight, 10)
        assert response.status.code == 0
        await asyncio.wait_for(stopping, 10)
        # The drain had the configured grace: released sooner than the server cancels, a held call
        # would finish under a drain of no grace at all.
        assert graces == [60.0]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await started.decide(github)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_gateway_settings_reach_the_request() -> None:
    async with serving(_config(gateway=GatewaySettings.create(zone="eu-west-prod"))) as started:
        support = "spiffe://prod.example.org/ns/support/sa/support-jump"
        response = await started.decide(EgressRequest(support, sni="login.idp.example.com", port=443))
        assert _metadata(response)["rule"] == "idp"


async def test_a_reload_swaps_the_policy_and_a_rejected_one_leaves_health_serving(tmp_path: Path) -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from tests.telemetry.helpers import metric_points

    for policy in ("ci-runner.yaml", "revocations.yaml", "reporting-exporter.yaml"):
        shutil.copy(EXAMPLES / policy, tmp_path / policy)
    metrics = InMemoryMetricReader()
    telemetry = Telemetry(TelemetryConfig({"OTEL_SDK_DISABLED": "true"}), metric_readers=[metrics])
    server = Server(_config(policy_paths=(str(tmp_path),)), telemetry)
    started = Running(server, await server.start())
    await server.load()
    try:
        github = EgressRequest(CI, sni="github.com", port=443)
        first = _metadata(await started.decide(github))
        assert first["reason"] == "ALLOWED_BY_RULE"
        (tmp_path / "ci-runner.yaml").write_text("not: [valid\n")
        assert not await server.reloader.reload()
        assert await started.health_of() == SERVING
        assert _metadata(await started.decide(github))["policy_version"] == first["policy_version"]
        revoked = (EXAMPLES / "ci-runner.yaml").read_text()
        (tmp_path / "ci-runner.yaml").write_text(revoked)
        revocations = tmp_path / "revocations.yaml"
        revocations.write_text(
            revocations.read_text()
            + f"    - {{identity: {CI}, reason: r, by: b, at: 2026-11-23T10:00:00Z}}\n"
        )
        assert await server.reloader.reload()
        now = _metadata(await started.decide(github))
        assert (now["reason"], now["revocation"]) == ("REVOKED", CI)
        assert now["policy_version"] == load_paths([tmp_path]).version != first["policy_version"]
        (info,) = metric_points(metrics, "egress_authz.policy.info")
        assert info.attributes == {"policy_version": now["policy_version"]}
        reloads = {
            p.attributes["result"]: p.value for p in metric_points(metrics, "egress_authz.policy.reloads")
        }
        assert reloads == {"applied": 2, "rejected": 1}
    finally:
        await started.channel.close()
        await server.stop(0)
        telemetry.shutdown()
