"""The grpc.aio transport: Envoy's Check method, the gRPC health service
and reflection on one port (TCP, several processes with SO_REUSEPORT, or a
Unix socket), mTLS on it if asked (and then a plaintext health-only port),
a graceful drain (GOAWAY, then in-flight calls finish)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from authz.ext_authz.callers import CallerCheck
from authz.ext_authz.check import OK, SERVICE_NAME, CheckService
from authz.ext_authz.health import SERVICE_UNKNOWN, HealthState
from authz.ext_authz.tls import grpcio_credentials
from authz.ext_authz.wire import ext_authz_pb2

if TYPE_CHECKING:
    from authz.ext_authz.server import ServeConfig

__all__ = ["GrpcioTransport"]


class GrpcioTransport:
    name = "grpcio"

    def __init__(
        self, config: ServeConfig, service: CheckService, health: HealthState, callers: CallerCheck | None
    ) -> None:
        self.config = config
        self.service = service
        self.health = health
        self.callers = callers
        # SO_REUSEPORT only for --workers N sharing the port: a lone server that
        # had it would silently split its calls with a stray second one (a stale
        # process on the same port, or another server bound to port 0).
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", int(config.workers > 1))])
        # Registered (not generic) handlers: no per-call handler lookup; no
        # (de)serializers: the check reads and writes the bytes itself.
        check = self._check if callers is None else self._check_caller
        self.server.add_registered_method_handlers(
            SERVICE_NAME, {"Check": grpc.unary_unary_rpc_method_handler(check)}
        )
        health_pb2_grpc.add_HealthServicer_to_server(_Health(health), self.server)
        if config.reflection:
            health_service = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
            names = (SERVICE_NAME, health_service, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self.server, pool=_reflection_pool())

    async def _check(self, data: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        outcome = self.service.check(data, context.time_remaining())
        if outcome.status != OK:
            await context.abort(_CODES[outcome.status], outcome.message)
        asyncio.get_running_loop().call_soon(self.service.after_response)  # once the response is on its way
        return outcome.body

    async def _check_caller(self, data: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        """The check for allowed callers only: the SPIFFE ID grpc core read from
        the verified client certificate (none on the plaintext health port)."""
        assert self.callers is not None
        peer = next(iter(context.auth_context().get("peer_spiffe_id", ())), None)
        refusal = self.callers.refusal(peer.decode("utf-8", "replace") if peer is not None else None)
        if refusal is not None:
            await context.abort(_CODES[refusal.status], refusal.message)
        return await self._check(data, context)

    async def start(self) -> int:
        """Listen; the port bound (0 for a Unix socket). Raises ValueError for unusable TLS files."""
        tls = self.config.tls
        if tls is None:
            port = self.server.add_insecure_port(self.config.listen)
        else:
            port = self.server.add_secure_port(self.config.listen, grpcio_credentials(tls))
        if self.config.health_listen is not None:
            self.server.add_insecure_port(self.config.health_listen)
        await self.server.start()
        return port

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight checks finish within ``grace`` seconds."""
        await self.server.stop(grace)


class _Health(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 over the process's HealthState: Check reads it as it is
    now, Watch streams each change (SERVICE_UNKNOWN for a service it does not know)."""

    def __init__(self, state: HealthState) -> None:
        self.state = state

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's method name)
        status = self.state.of(request.service)
        if status == SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: Any, context: Any) -> None:  # noqa: N802 (gRPC's method name)
        changed = asyncio.Event()
        unwatch = self.state.watch(lambda _: changed.set())
        try:
            last = None
            while True:
                status = self.state.of(request.service)
                if status != last:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last = status
                await changed.wait()
                changed.clear()
        finally:
            unwatch()


_CODES = {code.value[0]: code for code in grpc.StatusCode}


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
