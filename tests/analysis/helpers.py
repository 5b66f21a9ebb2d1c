"""Decision logs written the way the server writes them: each request decided
by the engine and turned into a record by the telemetry's own decision_record."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from authz.core.compiled import CompiledPolicy
from authz.core.engine import evaluate
from authz.core.request import EgressRequest
from authz.telemetry.decision_log import decision_record

START_NS = 1_793_534_400 * 10**9  # 2026-11-01T10:00:00Z


def write_log(
    path: Path, policy: CompiledPolicy, requests: Iterable[EgressRequest], step_s: float = 60.0
) -> Path:
    """One record a request, a minute apart from START_NS, appended to ``path``."""
    with path.open("a", encoding="utf-8") as file:
        for index, request in enumerate(requests):
            started = START_NS + int(index * step_s * 1e9)
            decision = evaluate(policy, request, started / 1e9)
            record = decision_record(decision, f"d{index}", request, started, started + 250_000)
            file.write(json.dumps(record) + "\n")
    return path
