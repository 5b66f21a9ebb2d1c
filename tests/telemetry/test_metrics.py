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
            p.attributes["owner"],
            p.attributes["mode"],
        ): p.value
        for p in always.metric("egress_authz.decisions")
    }
    assert counts == {
        ("allow", "ALLOWED_BY_RULE", "ci-runner", "team-platform", "enforce"): 1,
        ("deny", "NO_MATCHING_RULE", "ci-runner", "team-platform", "enforce"): 1,
        ("deny", "NO_IDENTITY", "", "", "enforce"): 1,
        ("allow", "DRY_RUN", "partner-sync", "team-test", "dry-run"): 1,
    }
    (coverage,) = always.metric("egress_authz.identity.coverage")
    assert coverage.value == pytest.approx(3 / 4)
    (unknown,) = always.metric("egress_authz.destination.unknown_ratio")
    assert unknown.value == pytest.approx(2 / 4)
    assert always.telemetry.metrics.durations.count == 4
    first_seen = {
        tuple(p.attributes.values()): p.value for p in always.metric("egress_authz.first_seen_destinations")
    }
    assert first_seen == {
        ("ci-runner", "team-platform"): 2,
        ("partner-sync", "team-test"): 1,
    }  # no identity: no pair
    always.record(*decide("spiffe://prod.example.org/ns/x/sa/unknown", "github.com"))
    first_seen = {
        tuple(p.attributes.values()): p.value for p in always.metric("egress_authz.first_seen_destinations")
    }
    assert first_seen[("", "")] == 1  # an identity no policy names: no policy, no owner


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


def test_each_exceptions_expiry_is_a_gauge_labelled_by_policy_exception_and_owners() -> None:
    """Read from the served policy at collection, expired exceptions included; no identity or host."""
    from authz.core.compiled import CompiledPolicy
    from authz.policy.compile import CompileOptions
    from authz.testing import compile_documents, policy_document

    def exception(name: str, expires: str, hosts: list[str]) -> dict[str, object]:
        return {"id": name, "hosts": hosts, "ports": [443], "owner": "alice", "reason": "r", "ticket": "INC-7",
                "expires": expires}  # fmt: skip

    policy = compile_documents(
        policy_document(
            "ci-runner", [CI], [], owner="team-platform",
            exceptions=[exception("hotfix", "2026-12-09T00:00:00Z", ["pastebin.com", "*.paste.example", "10.0.0.0/8"]),
                        exception("old", "2026-12-01T00:00:00Z", ["gist.example"])],
        ),
        policy_document("partner-sync", [PARTNER], []),
        options=CompileOptions(now=1_795_996_800),  # 2026-11-30: both were open then
    )  # fmt: skip
    recorded = Recorded({})
    served: list[CompiledPolicy | None] = [None]
    recorded.telemetry.metrics.observe_policy(lambda: served[0], dict)
    assert recorded.metric("egress_authz.exception.expiry_timestamp") == []  # nothing served yet
    served[0] = policy
    points = {
        tuple(p.attributes.items()): p.value
        for p in recorded.metric("egress_authz.exception.expiry_timestamp")
    }
    labels = ("policy", "exception", "owner", "exception_owner")
    assert points == {
        tuple(zip(labels, ("ci-runner", "hotfix", "team-platform", "alice"), strict=True)): 1_796_774_400,
        tuple(zip(labels, ("ci-runner", "old", "team-platform", "alice"), strict=True)): 1_796_083_200,
    }  # one point an exception, whatever number of hosts (exact, wildcard, CIDR) it names
    recorded.telemetry.shutdown()


def test_the_rejected_gauge_says_whether_the_files_hold_a_rejected_change() -> None:
    from tests.telemetry.helpers import POLICY

    recorded = Recorded({})
    rejected = [False]
    recorded.telemetry.metrics.observe_policy(lambda: POLICY, dict, lambda: rejected[0])
    assert [p.value for p in recorded.metric("egress_authz.policy.rejected")] == [0]
    rejected[0] = True
    assert [p.value for p in recorded.metric("egress_authz.policy.rejected")] == [1]
    recorded.telemetry.shutdown()


def test_more_policies_than_the_sdks_default_limit_keep_a_series_each() -> None:
    """The OTel SDK folds label sets past 2,000 a metric into one overflow series by default;
    10,000 policies' decisions must each stay their own (the alerts are per policy)."""
    from authz.core.decision import Decision, Mode, Reason, Verdict

    recorded = Recorded({})
    for index in range(2_500):
        decision = Decision(Verdict.ALLOW, Verdict.ALLOW, Reason.ALLOWED_BY_RULE, Mode.ENFORCE, CI, "github.com",
                            443, "v", policy=f"p{index}", owner="team")  # fmt: skip
        recorded.telemetry.metrics.count(decision, 1e-4, first=True)
    for name in ("egress_authz.decisions", "egress_authz.first_seen_destinations"):
        points = recorded.metric(name)
        assert len(points) == 2_500, name
        assert not any("otel.metric.overflow" in point.attributes for point in points), name
    recorded.telemetry.shutdown()
