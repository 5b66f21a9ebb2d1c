import pytest

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
    assert sum(p.count for p in always.metric("egress_authz.check.duration")) == 4
    (first_seen,) = always.metric("egress_authz.first_seen_destinations")
    assert first_seen.value == 3  # the check without identity has no pair
