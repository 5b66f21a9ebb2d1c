"""Decision logs made the way the server makes them: each request decided
by the real engine against real policy files, each record written by the
telemetry layer's own ``decision_record``; and the requests rebuilt from the
records, as replay does (``authz.analysis.replay.request_of``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from authz.core.compiled import CompiledPolicy
from authz.core.decision import Mode
from authz.core.engine import evaluate
from authz.core.request import EgressRequest
from authz.policy.compile import CompileOptions, load_policy
from authz.telemetry.decision_log import decision_record
from tests.paths import EXAMPLES

CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
PAYMENTS = "spiffe://prod.example.org/ns/payments/sa/payments-api"
PARTNER = "spiffe://prod.example.org/ns/partners/sa/partner-sync"
EXPORTER = "spiffe://prod.example.org/ns/reporting/sa/exporter"
STRANGER = "spiffe://prod.example.org/ns/web/sa/frontend"
ZONE = "eu-west-prod"


def http(
    identity: str | None, host: str, method: str = "GET", path: str = "/", **fields: Any
) -> EgressRequest:
    """An HTTPS request through the HTTP listener (port 443 by the scheme)."""
    return EgressRequest(identity, host, None, None, method, path, ZONE, "https")._replace(**fields)


def tls(identity: str | None, sni: str, port: int = 443) -> EgressRequest:
    """A TLS connection through the SNI listener: no HTTP host, method or path."""
    return EgressRequest(identity, None, port, sni, None, None, ZONE, None)


def records(
    traffic: Iterable[tuple[str, EgressRequest]],
    policies: Sequence[str | Path] = (EXAMPLES,),
    mode: Mode = Mode.ENFORCE,
) -> list[dict[str, Any]]:
    """The decision records of ``traffic`` ((RFC 3339 time, request) pairs)."""
    _, compiled = load_policy(list(policies), CompileOptions(mode=mode))
    timed = ((int(datetime.fromisoformat(moment).timestamp() * 1e9), request) for moment, request in traffic)
    return decided(compiled, timed)


def decided(compiled: CompiledPolicy, traffic: Iterable[tuple[int, EgressRequest]]) -> list[dict[str, Any]]:
    """The decision records of ``traffic`` ((nanoseconds since the epoch, request) pairs) under ``compiled``."""
    found = []
    for index, (started, request) in enumerate(traffic):
        decision = evaluate(compiled, request, now=started / 1e9)
        found.append(decision_record(decision, f"d{index}", request, started, started + 250_000))
    return found


def write_log(path: Path, lines: Iterable[dict[str, Any] | str]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path
