import pytest

from authz import EgressRequest
from tests.telemetry.helpers import CI, PARTNER, Recorded, decide


def test_metrics_for_the_scorecard(always: Recorded) -> None:
    always.record(*decide(CI, "github.com"))
    always.record(*decide(CI, "pastebin.com"))
    always.record(*decide(None, "github.com"))
    always.record(*decide(PARTNER, "pastebin.com"))
    counts = {
        (
            p.attributes["verdict"],
            p.attributes["reason"],
            p.attributes["policy"],
            p.attributes["mode"],
        ): p.value
        for p in always.metric("egress_authz.decisions")
    }
    assert counts == {
        ("allow", "ALLOWED_BY_RULE", "ci-runner", "enforce"): 1,
        ("deny", "NO_MATCHING_RULE", "ci-runner", "enforce"): 1,
        ("deny", "NO_IDENTITY", "", "enforce"): 1,
        ("allow", "DRY_RUN", "partner-sync", "dry-run"): 1,
    }
    (coverage,) = always.metric("egress_authz.identity.coverage")
    assert coverage.value == pytest.approx(3 / 4)
    (unknown,) = always.metric("egress_authz.destination.unknown_ratio")
    assert unknown.value == pytest.approx(2 / 4)
    assert always.telemetry.metrics.durations.count == 4
    (first_seen,) = always.metric("egress_authz.first_seen_destinations")
    assert first_seen.value == 3  # the check without identity has no pair


def test_exception_usage_is_counted_by_policy_and_exception() -> None:
    from datetime import UTC, datetime, timedelta

    from authz import evaluate
    from authz.testing import compile_documents, policy_document

    expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    exception = {"id": "hotfix", "hosts": ["pastebin.com"], "ports": [443], "owner": "alice", "reason": "r",
                 "ticket": "INC-7", "expires": expires}  # fmt: skip
    policy = compile_documents(policy_document("ci-runner", [CI], [], exceptions=[exception]))
    recorded = Recorded({"OTEL_TRACES_SAMPLER": "always_on"})
    for host in ("pastebin.com", "pastebin.com", "github.com"):
        request = EgressRequest(CI, None, 443, host)
        recorded.record(evaluate(policy, request), request)
    (uses,) = recorded.metric("egress_authz.exception.uses")
    assert (uses.attributes, uses.value) == ({"policy": "ci-runner", "exception": "hotfix"}, 2)
    span = recorded.finished()[0]
    attributes = dict(span.attributes or {})
    assert (attributes["egress_authz.exception"], attributes["egress_authz.ticket"]) == ("hotfix", "INC-7")
    assert attributes["egress_authz.exception_owner"] == "alice"
    recorded.telemetry.shutdown()


def test_check_durations_fall_in_prometheus_buckets() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from authz.telemetry.durations import CheckDurations

    durations = CheckDurations()
    for seconds in (20e-6, 25e-6, 30e-6, 0.002, 3.0):
        durations.observe(seconds)
    registry = CollectorRegistry()
    registry.register(durations)
    exposition = generate_latest(registry).decode()
    assert 'egress_authz_check_duration_seconds_bucket{le="2.5e-05"} 2.0' in exposition  # le: inclusive
    assert 'egress_authz_check_duration_seconds_bucket{le="5e-05"} 3.0' in exposition
    assert 'egress_authz_check_duration_seconds_bucket{le="0.0025"} 4.0' in exposition
    assert 'egress_authz_check_duration_seconds_bucket{le="1.0"} 4.0' in exposition
    assert 'egress_authz_check_duration_seconds_bucket{le="+Inf"} 5.0' in exposition
    assert "egress_authz_check_duration_seconds_count 5.0" in exposition
    assert "egress_authz_check_duration_seconds_sum 3.002075" in exposition
