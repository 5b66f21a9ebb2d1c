"""Health, as a plain object every transport reports from, and the probe
that asks a running `authz serve` (the lab, tests, `authz health`).

NOT_SERVING from start until a policy is loaded, SERVING after (a rejected
reload changes nothing), NOT_SERVING again while draining, for good. The
values are grpc.health.v1's ServingStatus.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["NOT_SERVING", "SERVICES", "SERVICE_UNKNOWN", "SERVING", "HealthState", "serving"]

SERVING, NOT_SERVING, SERVICE_UNKNOWN = 1, 2, 3
#: The overall server ("") and the Check service, as Envoy and Kubernetes ask for them.
SERVICES = ("", "envoy.service.auth.v3.Authorization")


class HealthState:
    def __init__(self) -> None:
        self.status = NOT_SERVING
        self.draining = False
        self._watchers: list[Callable[[int], None]] = []

    def of(self, service: str) -> int:
        return self.status if service in SERVICES else SERVICE_UNKNOWN

    def serving(self) -> None:
        if not self.draining:
            self._set(SERVING)

    def drain(self) -> None:
        self.draining = True
        self._set(NOT_SERVING)

    def watch(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call ``callback`` with each new status; the function returned stops it."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def _set(self, status: int) -> None:
        if status != self.status:
            self.status = status
            for callback in list(self._watchers):
                callback(status)


def serving(target: str, timeout: float = 1.0, service: str = "") -> bool:
    """Whether authz at ``target`` (HOST:PORT or unix:/path) says SERVING: its policy is loaded."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
