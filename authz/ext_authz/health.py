"""Asking an `authz serve` whether it serves: the standard gRPC health
check, for the lab, tests, `authz health` and container healthchecks."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["serving"]


def serving(target: str, timeout: float = 1.0, service: str = "") -> bool:
    """Whether authz at ``target`` (HOST:PORT or unix:/path) says SERVING: its policy is loaded."""
    with grpc.insecure_channel(target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
