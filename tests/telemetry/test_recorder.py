import json
import os
import time
from pathlib import Path

import pytest

from tests.telemetry.helpers import CI, PARENT_ID, TRACE_ID, Recorded, decide


def test_an_unsampled_callers_allow_keeps_its_trace_id_in_the_log(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    recorded = Recorded({}, decision_log=str(path))  # default: parent-based
    unsampled = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
    recorded.record(*decide(CI, "github.com"), unsampled)
    recorded.telemetry.shutdown()
    assert recorded.finished() == ()
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert (record["trace_id"], record["sampled"]) == (TRACE_ID, False)
    assert record["span_id"] != PARENT_ID
    assert len(record["span_id"]) == 16


def test_otel_service_name_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "egress-authz-eu-west")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")

    recorded = Recorded({**os.environ, "OTEL_TRACES_SAMPLER": "always_on"})
    recorded.record(*decide(CI, "github.com"))
    (span,) = recorded.finished()
    assert span.resource.attributes["service.name"] == "egress-authz-eu-west"
    assert span.resource.attributes["deployment.environment"] == "prod"
    assert span.resource.attributes["service.version"]
    recorded.telemetry.shutdown()


def test_a_check_only_queues_and_the_telemetry_thread_does_the_rest() -> None:
    recorded = Recorded({"OTEL_TRACES_SAMPLER": "always_on"})
    decision, request = decide(CI, "github.com")
    recorded.telemetry.record(decision, "d" * 32, request, lambda: {}, time.time_ns())
    assert len(recorded.telemetry.queued) in (0, 1)  # taken by the thread, or about to be
    deadline = time.monotonic() + 5
    while not recorded.spans.get_finished_spans() and time.monotonic() < deadline:
        time.sleep(0.01)  # no flush: the thread's own round (every 20 ms)
    assert len(recorded.spans.get_finished_spans()) == 1
    recorded.telemetry.shutdown()


def test_a_full_queue_drops_and_counts_never_blocks() -> None:
    recorded = Recorded({"OTEL_TRACES_SAMPLER": "always_on"}, queue_capacity=10, interval=60)
    decision, request = decide(CI, "github.com")
    for _ in range(25):
        recorded.telemetry.record(decision, "d" * 32, request, {}, time.time_ns())
    assert recorded.telemetry.queue_full == 15
    recorded.telemetry.flush()
    assert len(recorded.finished()) == 10
    (full,) = [
        p
        for p in recorded.metric("egress_authz.spans.dropped")
        if p.attributes["cause"] == "telemetry_queue_full"
    ]
    assert full.value == 15
    recorded.telemetry.shutdown()


def test_the_check_counts_every_decision_and_queues_only_those_with_more_to_do() -> None:
    """An allow in an unsampled caller's trace, to a pair seen before, is only counted on the
    check: nothing is queued. A first-seen pair, and a deny (always a span), are queued."""
    recorded = Recorded({}, interval=60)  # default sampling; the thread stays out of the way
    unsampled = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
    allow, allow_request = decide(CI, "github.com")
    for _ in range(50):
        recorded.telemetry.record(allow, "d" * 32, allow_request, lambda: unsampled, time.time_ns(),
                                  unsampled["traceparent"])  # fmt: skip
    assert len(recorded.telemetry.queued) == 1  # the first one: a first-seen destination
    deny, deny_request = decide(CI, "pastebin.com")
    recorded.telemetry.record(deny, "e" * 32, deny_request, unsampled, time.time_ns())
    recorded.telemetry.record(deny, "e" * 32, deny_request, unsampled, time.time_ns())
    assert len(recorded.telemetry.queued) == 3  # the first deny is also first seen: one entry
    assert recorded.telemetry.metrics.totals() == (52, 52, 2)
    recorded.telemetry.flush()
    assert [dict(s.attributes or {})["egress_authz.reason"] for s in recorded.finished()] == [
        "NO_MATCHING_RULE", "NO_MATCHING_RULE",
    ]  # fmt: skip
    recorded.telemetry.shutdown()
