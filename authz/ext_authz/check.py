"""The Check method, whatever carries it: CheckRequest bytes and the call's
time left in, a gRPC status and CheckResponse bytes out, with the
decision's telemetry. Transports (grpc.aio, pyvoy) only move bytes.

It fails closed: bytes that are not a CheckRequest are INVALID_ARGUMENT,
and anything that goes wrong while deciding is a deny (INTERNAL_ERROR,
TIMEOUT, NO_POLICY), never an allow and never a crash.
"""

from __future__ import annotations

import logging
import time
from random import getrandbits
from typing import NamedTuple

from google.protobuf.message import DecodeError

from authz.core.compiled import CompiledPolicy
from authz.core.decision import Decision, Reason
from authz.core.engine import evaluate, fail_closed
from authz.core.request import EgressRequest
from authz.ext_authz.attributes import GatewaySettings, egress_request, header
from authz.ext_authz.response import check_response
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest
from authz.telemetry import Telemetry

__all__ = ["INVALID_ARGUMENT", "MAX_MESSAGE_BYTES", "OK", "CheckOutcome", "CheckService", "SERVICE_NAME"]

SERVICE_NAME = "envoy.service.auth.v3.Authorization"
OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED = 0, 3, 8  # grpc.StatusCode values, without importing grpc
MAX_MESSAGE_BYTES = 4 * 2**20  # gRPC's default limit; Envoy's CheckRequests are a few KB
log = logging.getLogger("authz.server")


class CheckOutcome(NamedTuple):
    """The call's gRPC status; ``body`` (the CheckResponse) only when OK. (A
    NamedTuple: built on every call, it costs a third of a frozen dataclass.)"""

    status: int
    body: bytes = b""
    message: str = ""


_NOT_A_CHECK = CheckOutcome(INVALID_ARGUMENT, message="the request is not an ext_authz CheckRequest")
_TOO_LARGE = CheckOutcome(RESOURCE_EXHAUSTED, message=f"a CheckRequest is at most {MAX_MESSAGE_BYTES} bytes")


class CheckService:
    """The policy in force (``policy``, swapped whole by the reloader) and
    the check over it. Each call is independent: any transport may call
    ``check`` from its event loop."""

    def __init__(
        self, gateway: GatewaySettings, check_timeout: float, telemetry: Telemetry | None = None
    ) -> None:
        self.gateway = gateway
        self.check_timeout = check_timeout
        self.telemetry = telemetry
        self.policy: CompiledPolicy | None = None

    def check(self, data: bytes, time_remaining: float | None) -> CheckOutcome:
        """Decide on ``data``; ``time_remaining`` is the call's deadline (None: none)."""
        started = time.perf_counter()
        started_ns = time.time_ns()
        if len(data) > MAX_MESSAGE_BYTES:
            return _TOO_LARGE
        try:
            check = CheckRequest.FromString(data)
        except DecodeError:
            return _NOT_A_CHECK
        decision_id = f"{getrandbits(128):032x}"
        budget = self.check_timeout if time_remaining is None else min(self.check_timeout, time_remaining)
        decision, request = self.decide(check, decision_id, started, budget)
        telemetry = self.telemetry
        if telemetry is not None:
            try:
                traceparent = header(check.attributes.request.http, "traceparent")  # none for TCP
                telemetry.record(
                    decision, decision_id, request, lambda: _trace_headers(check), started_ns, traceparent
                )
            except Exception:
                log.exception("telemetry for check %s failed; the decision stands", decision_id)
        return CheckOutcome(
            OK, check_response(decision, decision_id, rate_limit_headers=self.gateway.rate_limit_headers)
        )

    def after_response(self) -> None:
        """Telemetry's turn on the serving thread, once a response is sent."""
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.after_response()

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
