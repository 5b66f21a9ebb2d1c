import time

import pytest

from tests.telemetry.helpers import CI, PARENT_ID, PARTNER, TRACE_ID, Recorded, decide


def test_denies_are_always_recorded_allows_follow_the_sampler(never_allows: Recorded) -> None:
    never_allows.record(*decide(CI, "github.com"))  # allow: sampled out
    never_allows.record(*decide(CI, "pastebin.com"))  # deny
    never_allows.record(*decide(PARTNER, "pastebin.com"))  # dry-run would-deny
    unsampled_parent = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
    never_allows.record(*decide(CI, "pastebin.com"), unsampled_parent)  # deny in an unsampled trace
    spans = never_allows.finished()
    assert [dict(s.attributes or {})["egress_authz.reason"] for s in spans] == [
        "NO_MATCHING_RULE",
        "DRY_RUN",
        "NO_MATCHING_RULE",
    ]
    assert format(spans[2].context.trace_id, "032x") == TRACE_ID


@pytest.mark.parametrize(("ratio", "low", "high"), [("1.0", 2000, 2000), ("0.5", 850, 1150), ("0", 0, 0)])
def test_allows_without_a_callers_trace_are_sampled_at_the_ratio_not_twice(
    ratio: str, low: int, high: int
) -> None:
    """Telemetry rolls the ratio sampler's dice before making a span; the span keeps that trace id,
    so the ratio is applied once (1% stays 1%, not 1% of 1%)."""
    recorded = Recorded({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": ratio})
    decision, request = decide(CI, "github.com")
    for _ in range(2000):
        recorded.telemetry.record(decision, "d" * 32, request, {}, time.time_ns())
    recorded.telemetry.flush()
    spans = recorded.finished()
    assert low <= len(spans) <= high
    bound = round(float(ratio) * 2**64)
    assert all((span.context.trace_id & (2**64 - 1)) < bound for span in spans)  # the dice's own trace ids
    recorded.telemetry.shutdown()
