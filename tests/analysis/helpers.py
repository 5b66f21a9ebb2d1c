"""A minute-by-minute decision log of requests under a compiled policy, for the replay tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from authz.core.compiled import CompiledPolicy
from authz.core.request import EgressRequest
from tests.analysis.traffic import decided
from tests.analysis.traffic import write_log as write_lines

START_NS = 1_793_534_400 * 10**9  # 2026-11-01T12:00:00Z


def write_log(
    path: Path, policy: CompiledPolicy, requests: Sequence[EgressRequest], step_s: float = 60.0
) -> Path:
    """One record a request, ``step_s`` apart from START_NS, written to ``path``."""
    timed = [(START_NS + int(index * step_s * 1e9), request) for index, request in enumerate(requests)]
    return write_lines(path, decided(policy, timed))
