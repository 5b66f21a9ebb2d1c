"""The ext_authz gRPC server: ``/envoy.service.auth.v3.Authorization/Check``,
gRPC health and reflection, graceful shutdown. (Several processes on one
port: ``workers``.)

The check path fails closed: a request that is not a CheckRequest is refused
with INVALID_ARGUMENT, and anything that goes wrong while deciding becomes a
deny (INTERNAL_ERROR, TIMEOUT, NO_POLICY), never an allow and never a crash.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2, timestamp_pb2
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2

from authz.core.compiled import CompiledPolicy
from authz.core.decision import Decision, Mode, Reason
from authz.core.engine import evaluate, fail_closed
from authz.core.request import EgressRequest
from authz.ext_authz.attributes import GatewaySettings, egress_request, header
from authz.ext_authz.response import check_response
from authz.ext_authz.wire import ext_authz_pb2
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest
from authz.policy import PolicyError
from authz.policy.compile import DEFAULT_MAX_EXCEPTION_DAYS, CompileOptions
from authz.policy.reload import PolicyReloader
from authz.telemetry import Telemetry, from_environment

__all__ = ["EXIT_BAD_POLICY", "SERVICE_NAME", "AuthzServer", "Authorizer", "ServeConfig", "serve"]

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
EXIT_BAD_POLICY = 2
log = logging.getLogger("authz.server")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    policy_paths: tuple[str, ...]
    listen: str = "127.0.0.1:9191"
    workers: int = 1
    reflection: bool = True
    grace_seconds: float = 5.0
    check_timeout: float = 0.1  # below Envoy's ext_authz default of 200 ms
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    decision_log: str | None = None  # a path, or "-" for stdout
    decision_log_max_bytes: int = 100 * 2**20
    metrics_port: int | None = None  # Prometheus scrape endpoint (worker i: port + i)
    metrics_bind: str = "127.0.0.1"
    first_seen_capacity: int = 100_000
    load_before_listen: bool = False  # workers sharing a port: see serve()
    mode: Mode = Mode.ENFORCE  # DRY_RUN: the whole zone in dry-run (the guards stay enforced)
    max_exception_days: float = DEFAULT_MAX_EXCEPTION_DAYS
    watch: bool = True  # reload when the policy files change (SIGHUP reloads either way)
    reload_debounce_ms: int = 50
    reload_poll_seconds: float | None = None  # poll instead of inotify (network filesystems)

    def compile_options(self) -> CompileOptions:
        return CompileOptions(mode=self.mode, max_exception_days=self.max_exception_days)


class Authorizer:
    """The Check method over raw bytes: decoding is ours, so that garbage is
    INVALID_ARGUMENT rather than grpc's generic deserialization failure."""

    def __init__(
        self, gateway: GatewaySettings, check_timeout: float, telemetry: Telemetry | None = None
    ) -> None:
        self.gateway = gateway
        self.check_timeout = check_timeout
        self.telemetry = telemetry
        self.policy: CompiledPolicy | None = None

    async def check(self, data: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        started = time.perf_counter()
        started_ns = time.time_ns()
        decision_id = os.urandom(16).hex()
        try:
            check = CheckRequest.FromString(data)
        except DecodeError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the request is not an ext_authz CheckRequest"
            )
        budget = self.check_timeout
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining)
        decision, request = self.decide(check, decision_id, started, budget)
        if self.telemetry is not None:
            try:
                self.telemetry.record(decision, decision_id, request, _trace_headers(check), started_ns)
            except Exception:
                log.exception("telemetry for check %s failed; the decision stands", decision_id)
        return check_response(decision, decision_id, rate_limit_headers=self.gateway.rate_limit_headers)

    def decide(
        self, check: CheckRequest, decision_id: str, started: float, budget: float
    ) -> tuple[Decision, EgressRequest | None]:
        policy = self.policy
        version = policy.version if policy is not None else "none"
        request: EgressRequest | None = None
        try:
            request = egress_request(check, self.gateway)
            if policy is None:
                return fail_closed(Reason.NO_POLICY, "no policy is loaded yet", version, request), request
            decision = evaluate(policy, request)
            elapsed = time.perf_counter() - started
            if elapsed > budget:
                detail = f"the check took {elapsed * 1000:.1f} ms of a {budget * 1000:.1f} ms budget"
                return fail_closed(Reason.TIMEOUT, detail, version, request), request
            return decision, request
        except Exception:
            log.exception("check %s failed; denied with INTERNAL_ERROR", decision_id)
            return fail_closed(Reason.INTERNAL_ERROR, "internal error", version, request), request


def _trace_headers(check: CheckRequest) -> dict[str, str]:
    """W3C trace context from the HTTP request Envoy checks (none for TCP)."""
    if not check.attributes.request.HasField("http"):
        return {}
    http = check.attributes.request.http
    found = {}
    for name in ("traceparent", "tracestate"):
        value = header(http, name)
        if value is not None:
            found[name] = value
    return found


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """A pool of its own that serves the Check method under Envoy's service
    name, so reflection clients (grpcurl) see what Envoy calls, while the
    process's default pool holds only our private package."""
    pool = descriptor_pool.DescriptorPool()
    for module in (struct_pb2, timestamp_pb2, ext_authz_pb2, health_pb2, reflection_pb2):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    service_file = descriptor_pb2.FileDescriptorProto(
        name="envoy/service/auth/v3/external_auth.proto",
        package="envoy.service.auth.v3",
        dependency=[ext_authz_pb2.DESCRIPTOR.name],
        syntax="proto3",
    )
    service_file.service.add(name="Authorization").method.add(
        name="Check",
        input_type=".egress_authz.wire.v3.CheckRequest",
        output_type=".egress_authz.wire.v3.CheckResponse",
    )
    pool.Add(service_file)
    return pool


class AuthzServer:
    """The gRPC server with its health: NOT_SERVING from start until a policy
    is loaded, SERVING after (a rejected reload changes nothing), NOT_SERVING
    again while draining."""

    def __init__(
        self, config: ServeConfig, authorizer: Authorizer | None = None, telemetry: Telemetry | None = None
    ) -> None:
        self.config = config
        self.authorizer = authorizer or Authorizer(config.gateway, config.check_timeout, telemetry)
        self.reloader = PolicyReloader(
            config.policy_paths,
            config.compile_options(),
            self._swap,
            debounce_ms=config.reload_debounce_ms,
            poll_seconds=config.reload_poll_seconds,
        )
        if telemetry is not None:
            telemetry.metrics.observe_policy(self._policy_version, lambda: self.reloader.counts)
        self.health = HealthServicer()
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        handler = grpc.method_handlers_generic_handler(
            SERVICE_NAME, {"Check": grpc.unary_unary_rpc_method_handler(self.authorizer.check)}
        )
        self.server.add_generic_rpc_handlers((handler,))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if config.reflection:
            health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
            names = (SERVICE_NAME, health_service, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.server, pool=_reflection_pool())

    async def start(self) -> int:
        """Listen; the port bound (0 for a Unix socket)."""
        if self.authorizer.policy is None:
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        port = self.server.add_insecure_port(self.config.listen)
        await self.server.start()
        return port

    async def load(self) -> CompiledPolicy:
        """Load and compile the policy off the event loop, then serve it; raises PolicyError."""
        compiled = await self.reloader.load()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        return compiled

    def _swap(self, compiled: CompiledPolicy) -> None:
        self.authorizer.policy = compiled  # one assignment: a check sees the old version or the new

    def _policy_version(self) -> str | None:
        policy = self.authorizer.policy
        return policy.version if policy is not None else None

    async def stop(self) -> None:
        """Refuse new calls, let in-flight checks finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.grace_seconds)

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)


async def serve(
    config: ServeConfig, stop: asyncio.Event | None = None, on_serving: Callable[[], None] | None = None
) -> int:
    """Serve until SIGTERM, SIGINT or ``stop``; then drain. The exit status.
    ``on_serving`` is called once the policy is loaded and the port is open."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    telemetry = from_environment(
        config.decision_log,
        config.decision_log_max_bytes,
        config.metrics_port,
        config.first_seen_capacity,
        config.metrics_bind,
    )
    server = AuthzServer(config, telemetry=telemetry)
    try:
        # One process listens first, to report NOT_SERVING while it loads. A
        # worker sharing the port loads first: the kernel would hand it
        # connections before it had a policy.
        compiled = await server.load() if config.load_before_listen else None
        port = await server.start()
        where = (
            config.listen
            if config.listen.startswith("unix:")
            else f"{config.listen.rpartition(':')[0]}:{port}"
        )
        log.info("listening on %s (pid %d)", where, os.getpid())
        if compiled is None:
            compiled = await server.load()
    except PolicyError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        await server.server.stop(0)
        return EXIT_BAD_POLICY
    mode = " (zone-wide dry-run)" if config.mode is Mode.DRY_RUN else ""
    log.info("serving policy %s: %d policies%s", compiled.version, len(compiled.services), mode)
    loop.add_signal_handler(signal.SIGHUP, server.reloader.request)
    reloads = asyncio.create_task(server.reloader.watch(stop, files=config.watch))
    if on_serving is not None:
        on_serving()
    await stop.wait()
    await reloads
    log.info("draining for up to %.1f s", config.grace_seconds)
    await server.stop()
    if telemetry is not None:
        await asyncio.to_thread(telemetry.shutdown)  # flush spans and the decision log
    log.info("stopped")
    return 0
