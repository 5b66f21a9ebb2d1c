"""Policy unit tests (``kind: EgressPolicyTest``): requests with the decision
they must get, run against the compiled policy exactly as the server would."""

from __future__ import annotations

from dataclasses import dataclass

from authz.core.compiled import CompiledPolicy
from authz.core.decision import Decision
from authz.core.engine import evaluate
from authz.core.request import EgressRequest
from authz.policy.load import PolicySet
from authz.policy.model import TestCase

__all__ = ["CaseResult", "request_for", "run_tests"]


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    file: str
    line: int
    request: EgressRequest
    decision: Decision
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures


def request_for(case: TestCase) -> EgressRequest:
    destination, http = case.destination, case.http
    return EgressRequest(
        identity=case.identity,
        host=destination.host,
        port=destination.port,
        sni=destination.sni,
        method=http.method if http is not None else None,
        path=http.path if http is not None else None,
        zone=case.zone,
        scheme=destination.scheme,
    )


def _failures(case: TestCase, decision: Decision) -> tuple[str, ...]:
    expect = case.expect
    failures: list[str] = []
    if decision.verdict is not expect.verdict:
        failures.append(f"verdict {decision.verdict}, expected {expect.verdict}")
    if expect.reason is not None and decision.reason is not expect.reason:
        failures.append(f"reason {decision.reason}, expected {expect.reason}")
    if expect.policy is not None and decision.policy != expect.policy:
        failures.append(f"policy {decision.policy}, expected {expect.policy}")
    if expect.rule is not None and decision.rule != expect.rule:
        failures.append(f"rule {decision.rule}, expected {expect.rule}")
    return tuple(failures)


def run_tests(policy: CompiledPolicy, policy_set: PolicySet, now: float | None = None) -> list[CaseResult]:
    """Every case of ``policy_set``'s tests, decided at its ``at``, or else at
    ``now`` (seconds since the epoch, default the clock)."""
    results: list[CaseResult] = []
    for loaded in policy_set.tests:
        for index, case in enumerate(loaded.model.spec.cases):
            request = request_for(case)
            decision = evaluate(policy, request, case.at.timestamp() if case.at is not None else now)
            line = loaded.source.line(("spec", "cases", index))
            failures = _failures(case, decision)
            results.append(CaseResult(case.name, loaded.source.file, line, request, decision, failures))
    return results
