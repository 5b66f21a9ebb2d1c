"""The shadow policy in the telemetry path: every check is evaluated against
the candidate set after it is recorded, its outcome lands in the span, the
decision log and the metrics, and nothing it does reaches the check."""

from __future__ import annotations

import calendar
import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz import EgressRequest, evaluate
from authz.core.compiled import CompiledPolicy, ServicePolicy
from authz.core.decision import Reason
from authz.core.engine import fail_closed
from authz.policy.compile import CompileOptions
from authz.testing import compile_documents, policy_document
from tests.telemetry.helpers import CI, PARENT_ID, POLICY, TRACE_ID, Recorded, decide

# The candidate: CI may reach pypi.org instead of github.com.
CANDIDATE = compile_documents(
    policy_document("ci-runner", [CI], [{"id": "pypi", "hosts": ["pypi.org"], "ports": [443]}]),
    version="sha256:candidate",
)
UNSAMPLED = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}


def _shadow(recorded: Recorded, policy: CompiledPolicy) -> Recorded:
    recorded.telemetry.shadow.policy = policy
    return recorded


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _points(recorded: Recorded, name: str) -> dict[tuple[str, ...], int]:
    return {tuple(p.attributes.values()): p.value for p in recorded.metric(name)}


@pytest.fixture
def logged(tmp_path: Path) -> Iterator[tuple[Recorded, Path]]:
    path = tmp_path / "decisions.jsonl"
    recorded = Recorded({"OTEL_TRACES_SAMPLER": "always_on"}, decision_log=str(path))
    yield _shadow(recorded, CANDIDATE), path
    recorded.telemetry.shutdown()


def test_without_a_shadow_policy_an_unsampled_allow_is_not_queued_and_with_one_it_is() -> None:
    environ = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    recorded = Recorded(environ, interval=60)  # the telemetry thread stays out of the way
    telemetry = recorded.telemetry
    decision, request = decide(CI, "github.com")
    recorded.record(decision, request, UNSAMPLED)  # a first sighting: queued for its log record
    telemetry.record(decision, "d" * 32, request, UNSAMPLED, time.time_ns())
    assert len(telemetry.queued) == 0  # nothing more to do for it
    _shadow(recorded, POLICY)  # a candidate identical to the served policy: it agrees
    telemetry.record(decision, "d" * 32, request, UNSAMPLED, time.time_ns())
    assert len(telemetry.queued) == 1
    telemetry.flush()
    assert recorded.finished() == ()  # an agreeing allow stays unsampled
    assert _points(recorded, "egress_authz.shadow.checks") == {("agree",): 1}
    assert _points(recorded, "egress_authz.shadow.disagreements") == {}
    telemetry.shutdown()


def test_every_record_names_the_shadow_outcome_and_the_span_says_whether_it_disagrees(
    logged: tuple[Recorded, Path],
) -> None:
    recorded, path = logged
    for host in ("github.com", "pypi.org", "pastebin.com"):
        recorded.record(*decide(CI, host))
    recorded.telemetry.shutdown()
    outcomes = [
        (r["host"], r["verdict"], r["shadow_verdict"], r["shadow_reason"], r["shadow_policy_version"])
        for r in _records(path)
    ]
    assert outcomes == [
        ("github.com", "allow", "deny", "NO_MATCHING_RULE", "sha256:candidate"),
        ("pypi.org", "deny", "allow", "ALLOWED_BY_RULE", "sha256:candidate"),
        ("pastebin.com", "deny", "deny", "NO_MATCHING_RULE", "sha256:candidate"),
    ]
    shadows = [
        {k: v for k, v in (span.attributes or {}).items() if k.startswith("egress_authz.shadow.")}
        for span in recorded.finished()
    ]
    assert shadows == [
        {"egress_authz.shadow.disagrees": True, "egress_authz.shadow.verdict": "deny",
         "egress_authz.shadow.reason": "NO_MATCHING_RULE", "egress_authz.shadow.policy_version": "sha256:candidate"},
        {"egress_authz.shadow.disagrees": True, "egress_authz.shadow.verdict": "allow",
         "egress_authz.shadow.reason": "ALLOWED_BY_RULE", "egress_authz.shadow.policy_version": "sha256:candidate"},
        {"egress_authz.shadow.disagrees": False, "egress_authz.shadow.verdict": "deny",
         "egress_authz.shadow.reason": "NO_MATCHING_RULE", "egress_authz.shadow.policy_version": "sha256:candidate"},
    ]  # fmt: skip
    assert _points(recorded, "egress_authz.shadow.checks") == {("agree",): 1, ("disagree",): 2}
    assert _points(recorded, "egress_authz.shadow.disagreements") == {
        (
            "allow",
            "deny",
            "NO_MATCHING_RULE",
            "ci-runner",
            "team-test",
        ): 1,  # the candidate's policy and owner
        ("deny", "allow", "ALLOWED_BY_RULE", "ci-runner", "team-test"): 1,
    }
    assert _points(recorded, "egress_authz.shadow.policy.info") == {("sha256:candidate",): 1}


def test_a_disagreeing_allow_is_a_span_whatever_the_allow_sampler_says(never_allows: Recorded) -> None:
    _shadow(never_allows, CANDIDATE)
    never_allows.record(*decide(CI, "github.com"))  # no parent: the ratio's dice (0) drop every allow
    never_allows.record(*decide(CI, "github.com"), UNSAMPLED)  # the caller's trace is not sampled
    root, child = never_allows.finished()
    for span in (root, child):
        assert (span.attributes or {})["egress_authz.shadow.disagrees"] is True
        assert span.context is not None
        assert span.context.trace_flags.sampled
    assert child.context is not None
    assert format(child.context.trace_id, "032x") == TRACE_ID
    assert child.parent is not None
    assert format(child.parent.span_id, "016x") == PARENT_ID


def test_a_raising_shadow_evaluation_is_counted_logged_once_and_recorded_as_internal_error(
    logged: tuple[Recorded, Path], caplog: pytest.LogCaptureFixture
) -> None:
    class Raising(dict[str, ServicePolicy]):
        def get(self, *_: object) -> Any:
            raise RuntimeError("broken candidate")

    recorded, path = logged
    _shadow(recorded, dataclasses.replace(CANDIDATE, by_identity=Raising()))
    with caplog.at_level(logging.ERROR, logger="authz.shadow"):
        for host in ("github.com", "pastebin.com"):
            recorded.record(*decide(CI, host))  # record never raises
    recorded.telemetry.shutdown()
    assert [(r["verdict"], r["reason"], r["shadow_verdict"], r["shadow_reason"]) for r in _records(path)] == [
        ("allow", "ALLOWED_BY_RULE", "deny", "INTERNAL_ERROR"),
        ("deny", "NO_MATCHING_RULE", "deny", "INTERNAL_ERROR"),
    ]
    assert len(caplog.records) == 1  # once for this candidate version
    assert "sha256:candidate" in caplog.records[0].getMessage()
    assert _points(recorded, "egress_authz.shadow.checks") == {("error",): 2}
    assert _points(recorded, "egress_authz.shadow.disagreements") == {
        (
            "allow",
            "deny",
            "INTERNAL_ERROR",
            "ci-runner",
            "team-platform",
        ): 1  # no candidate policy: the served one's
    }


@pytest.mark.parametrize("reason", [Reason.TIMEOUT, Reason.INTERNAL_ERROR, Reason.NO_POLICY])
def test_a_check_denied_without_evaluation_gets_the_same_deny_from_the_shadow(
    reason: Reason, logged: tuple[Recorded, Path]
) -> None:
    recorded, path = logged
    request = EgressRequest(CI, "pypi.org", 443)  # the candidate would allow it, if it were asked
    recorded.record(fail_closed(reason, "not evaluated", POLICY.version, request), request)
    recorded.record(fail_closed(reason, "no request", POLICY.version), None)
    recorded.telemetry.shutdown()
    for record in _records(path):
        assert (record["shadow_verdict"], record["shadow_reason"]) == ("deny", reason.value)
        assert record["shadow_policy_version"] == "sha256:candidate"
    assert _points(recorded, "egress_authz.shadow.checks") == {("agree",): 2}


def test_the_shadow_judges_exceptions_at_the_checks_instant(logged: tuple[Recorded, Path]) -> None:
    expires = calendar.timegm((2026, 1, 1, 0, 0, 0))  # in the past: the clock would say expired
    candidate = compile_documents(
        policy_document("ci-runner", [CI], [], exceptions=[
            {"id": "pypi-now", "hosts": ["pypi.org"], "ports": [443], "owner": "team-platform",
             "reason": "a test", "ticket": "INC-1", "expires": "2026-01-01T00:00:00Z"},
        ]),
        version="sha256:exception", options=CompileOptions(now=expires - 86_400),
    )  # fmt: skip
    recorded, path = logged
    _shadow(recorded, candidate)
    decision, request = decide(CI, "pypi.org")
    for started in (expires - 60, expires + 60):
        recorded.telemetry.record(decision, "d" * 32, request, {}, started * 10**9)
    recorded.telemetry.shutdown()
    assert [r["shadow_reason"] for r in _records(path)] == ["ALLOWED_BY_EXCEPTION", "EXCEPTION_EXPIRED"]
    assert evaluate(candidate, request).reason is Reason.EXCEPTION_EXPIRED  # now, it has expired
