"""A small policy, its decisions, and a Telemetry that records in memory."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from authz import EgressRequest, evaluate
from authz.core.decision import Decision
from authz.telemetry import Telemetry, TelemetryConfig
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


def decide(identity: str | None, host: str, **fields: Any) -> tuple[Decision, EgressRequest]:
    request = EgressRequest(identity, host, 443, **fields)
    return evaluate(POLICY, request), request


def metric_points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


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
        self.telemetry.flush()  # what the telemetry thread does every 20 ms

    def finished(self) -> Sequence[ReadableSpan]:
        return self.spans.get_finished_spans()

    def metric(self, name: str) -> list[Any]:
        return metric_points(self.metrics, name)
