import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from authz import EgressRequest, evaluate
from authz.decision import Decision
from authz.telemetry import SPAN_NAME, DecisionLog, FirstSeen, Telemetry, TelemetryConfig
from authz.testing import compile_documents, policy_document

CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
PARTNER = "spiffe://prod.example.org/ns/partners/sa/partner-sync"
POLICY = compile_documents(
    policy_document(
        "ci-runner", [CI], [{"id": "github", "hosts": ["github.com"], "ports": [443]}], owner="team-platform"
    ),
    policy_document("partner-sync", [PARTNER], [], mode="dry-run"),
)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def _decide(identity: str | None, host: str, **fields: Any) -> tuple[Decision, EgressRequest]:
    request = EgressRequest(identity, host, 443, **fields)
    return evaluate(POLICY, request), request


class Recorded:
    def __init__(self, environ: dict[str, str], **config: Any) -> None:
        self.spans = InMemorySpanExporter()
        self.metrics = InMemoryMetricReader()
        self.telemetry = Telemetry(
            TelemetryConfig(environ, **config),
            span_processor=SimpleSpanProcessor(self.spans),
            metric_readers=[self.metrics],
        )

    def record(
        self, decision: Decision, request: EgressRequest | None, headers: dict[str, str] | None = None
    ) -> None:
        self.telemetry.record(decision, "d" * 32, request, headers or {}, time.time_ns() - 1000)

    def finished(self) -> Sequence[ReadableSpan]:
        return self.spans.get_finished_spans()

    def metric(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def always() -> Iterator[Recorded]:
    recorded = Recorded({"OTEL_TRACES_SAMPLER": "always_on"})
    yield recorded
    recorded.telemetry.shutdown()


@pytest.fixture
def never_allows() -> Iterator[Recorded]:
    recorded = Recorded({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"})
    yield recorded
    recorded.telemetry.shutdown()


def test_span_carries_the_decision_under_semantic_names(always: Recorded) -> None:
    decision, request = _decide(
        CI, "github.com", method="GET", path="/org/repo?x=1", sni="github.com", zone="eu"
    )
    always.record(decision, request)
    (span,) = always.finished()
    assert span.name == SPAN_NAME
    assert span.kind is SpanKind.SERVER
    assert dict(span.attributes or {}) == {
        "egress_authz.would_deny": False,
        "egress_authz.decision_id": "d" * 32,
        "egress_authz.verdict": "allow",
        "egress_authz.reason": "ALLOWED_BY_RULE",
        "egress_authz.mode": "enforce",
        "egress_authz.policy_version": "sha256:test",
        "egress_authz.identity": CI,
        "egress_authz.policy": "ci-runner",
        "egress_authz.rule": "github",
        "egress_authz.owner": "team-platform",
        "egress_authz.change_ref": "CHG-0",
        "egress_authz.zone": "eu",
        "server.address": "github.com",
        "server.port": 443,
        "tls.client.server_name": "github.com",
        "http.request.method": "GET",
        "url.path": "/org/repo",
    }
    assert span.resource.attributes["service.name"] == "egress-authz"
    assert span.resource.attributes["service.version"]


def test_span_joins_the_callers_trace(always: Recorded) -> None:
    decision, request = _decide(CI, "github.com")
    always.record(
        decision, request, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "congo=t61"}
    )
    (span,) = always.finished()
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.context.trace_state.get("congo") == "t61"


def test_without_trace_context_the_span_is_a_root(always: Recorded) -> None:
    always.record(*_decide(CI, "github.com"))
    (span,) = always.finished()
    assert span.parent is None


def test_denies_are_always_recorded_allows_follow_the_sampler(never_allows: Recorded) -> None:
    never_allows.record(*_decide(CI, "github.com"))  # allow: sampled out
    never_allows.record(*_decide(CI, "pastebin.com"))  # deny
    never_allows.record(*_decide(PARTNER, "pastebin.com"))  # dry-run would-deny
    unsampled_parent = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
    never_allows.record(*_decide(CI, "pastebin.com"), unsampled_parent)  # deny in an unsampled trace
    spans = never_allows.finished()
    assert [dict(s.attributes or {})["egress_authz.reason"] for s in spans] == [
        "NO_MATCHING_RULE",
        "DRY_RUN",
        "NO_MATCHING_RULE",
    ]
    assert format(spans[2].context.trace_id, "032x") == TRACE_ID


def test_metrics_for_the_scorecard(always: Recorded) -> None:
    always.record(*_decide(CI, "github.com"))
    always.record(*_decide(CI, "pastebin.com"))
    always.record(*_decide(None, "github.com"))
    always.record(*_decide(PARTNER, "pastebin.com"))
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


def test_first_seen_destination_is_an_event_and_a_log_record_once(
    always: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="authz.first_seen"):
        for _ in range(3):
            always.record(*_decide(CI, "github.com"))
    events = [[event.name for event in span.events] for span in always.finished()]
    assert events == [["first_seen_destination"], [], []]
    (message,) = [r.getMessage() for r in caplog.records if r.name == "authz.first_seen"]
    assert message.startswith(f"first_seen_destination identity={CI} destination=github.com:443")


def test_first_seen_memory_is_bounded() -> None:
    seen = FirstSeen(capacity=2)
    assert [seen.first("a", d) for d in ("x", "y", "x", "z")] == [True, True, False, True]
    assert seen.first("a", "y")  # evicted by z, reported again
    assert len(seen._seen) == 2


def test_decision_log_records_are_complete_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    recorded = Recorded({"OTEL_TRACES_SAMPLER": "always_on"}, decision_log=str(path))
    decision, request = _decide(CI, "pastebin.com", method="GET", path="/raw", zone="eu")
    recorded.record(decision, request, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    recorded.telemetry.shutdown()
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert set(record) == {
        "time", "decision_id", "allowed", "verdict", "would_verdict", "reason", "dry_run_reason", "mode", "policy",
        "rule", "owner", "change_ref", "identity", "host", "port", "destination", "sni", "method", "path", "zone",
        "policy_version", "service_version", "detail", "duration_ms", "trace_id", "span_id", "sampled", "first_seen",
    }  # fmt: skip
    assert (record["verdict"], record["reason"], record["identity"], record["destination"]) == (
        "deny", "NO_MATCHING_RULE", CI, "pastebin.com:443",
    )  # fmt: skip
    assert record["trace_id"] == TRACE_ID
    assert record["first_seen"] is True
    assert record["time"].endswith("Z")


def test_decision_log_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(str(path), max_bytes=2000, backups=2)
    for index in range(200):
        log.write({"n": index, "pad": "x" * 50})
        if index % 20 == 0:
            time.sleep(0.01)  # let the writer drain and rotate
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["decisions.jsonl", "decisions.jsonl.1", "decisions.jsonl.2"]
    assert all(p.stat().st_size <= 2000 + 200 for p in tmp_path.iterdir())
    last = [json.loads(line)["n"] for line in path.read_text().splitlines()]
    assert last[-1] == 199


class Stuck(SpanExporter):
    """A collector that never answers."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        self.release.wait(30)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.release.set()


def test_a_stuck_collector_never_holds_a_check_and_losses_are_counted() -> None:
    stuck = Stuck()
    metrics = InMemoryMetricReader()
    environ = {
        "OTEL_TRACES_SAMPLER": "always_on",
        "OTEL_BSP_MAX_QUEUE_SIZE": "64",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "32",
        "OTEL_BSP_SCHEDULE_DELAY": "1",
    }
    telemetry = Telemetry(TelemetryConfig(environ), span_exporter=stuck, metric_readers=[metrics])
    decision, request = _decide(CI, "pastebin.com")
    for _ in range(1000):  # returns although the exporter is blocked: export happens on another thread
        telemetry.record(decision, "d" * 32, request, {}, time.time_ns())
    assert stuck.calls <= 1
    data = metrics.get_metrics_data()
    assert data is not None
    dropped = {
        point.attributes["cause"]: point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "egress_authz.spans.dropped"
        for point in metric.data.data_points
    }
    assert dropped["queue_full"] == 1000 - 64  # the rest wait (one batch of them in the stuck export)
    stuck.release.set()
    telemetry.shutdown()
    assert telemetry.export is not None
    assert telemetry.export.export_failed == 64


def test_an_unreachable_otlp_collector_is_counted_as_failed_exports() -> None:
    from authz.lab import free_port

    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{free_port()}", insecure=True, timeout=1)
    telemetry = Telemetry(TelemetryConfig({"OTEL_TRACES_SAMPLER": "always_on"}), span_exporter=exporter)
    decision, request = _decide(CI, "pastebin.com")
    for _ in range(10):
        telemetry.record(decision, "d" * 32, request, {}, time.time_ns())
    telemetry.tracer_provider.force_flush(5000)
    telemetry.shutdown()
    assert telemetry.export is not None
    assert telemetry.export.export_failed == 10


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "congo=t61,rojo=00f067aa0ba902b7"},
        {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"},
        {"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"},
        {"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"},
        {"traceparent": f"01-{TRACE_ID}-{PARENT_ID}-01-future"},
        {"traceparent": f"ff-{TRACE_ID}-{PARENT_ID}-01"},
        {"traceparent": "garbage"},
        {"tracestate": "congo=t61"},
    ],
)
def test_parent_context_agrees_with_the_w3c_propagator(headers: dict[str, str]) -> None:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from authz.telemetry import _parent_span_context

    ours = _parent_span_context(headers)
    theirs = trace.get_current_span(TraceContextTextMapPropagator().extract(headers)).get_span_context()
    if ours is None:
        assert not theirs.is_valid
        return
    assert (ours.trace_id, ours.span_id, ours.trace_flags, ours.is_remote) == (
        theirs.trace_id, theirs.span_id, theirs.trace_flags, theirs.is_remote,
    )  # fmt: skip
    assert theirs.is_valid
    assert dict(ours.trace_state) == dict(theirs.trace_state)


def test_an_unsampled_callers_allow_keeps_its_trace_id_in_the_log(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    recorded = Recorded({}, decision_log=str(path))  # default: parent-based
    unsampled = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
    recorded.record(*_decide(CI, "github.com"), unsampled)
    recorded.telemetry.shutdown()
    assert recorded.finished() == ()
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert (record["trace_id"], record["sampled"]) == (TRACE_ID, False)
    assert record["span_id"] != PARENT_ID
    assert len(record["span_id"]) == 16


def test_otel_service_name_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "egress-authz-eu-west")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
    import os

    recorded = Recorded({**os.environ, "OTEL_TRACES_SAMPLER": "always_on"})
    recorded.record(*_decide(CI, "github.com"))
    (span,) = recorded.finished()
    assert span.resource.attributes["service.name"] == "egress-authz-eu-west"
    assert span.resource.attributes["deployment.environment"] == "prod"
    assert span.resource.attributes["service.version"]
    recorded.telemetry.shutdown()
