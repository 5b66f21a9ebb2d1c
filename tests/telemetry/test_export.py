import threading
import time
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from authz.gateway.lab import free_port
from authz.telemetry import Telemetry, TelemetryConfig
from tests.telemetry.helpers import CI, decide


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
    decision, request = decide(CI, "pastebin.com")
    for _ in range(1000):  # returns although the exporter is blocked: export happens on another thread
        telemetry.record(decision, "d" * 32, request, {}, time.time_ns())
    telemetry.flush()
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
    assert telemetry.spans.export is not None
    assert telemetry.spans.export.export_failed == 64


def test_an_unreachable_otlp_collector_is_counted_as_failed_exports() -> None:

    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{free_port()}", insecure=True, timeout=1)
    telemetry = Telemetry(TelemetryConfig({"OTEL_TRACES_SAMPLER": "always_on"}), span_exporter=exporter)
    decision, request = decide(CI, "pastebin.com")
    for _ in range(10):
        telemetry.record(decision, "d" * 32, request, {}, time.time_ns())
    telemetry.flush()
    telemetry.spans.provider.force_flush(5000)
    telemetry.shutdown()
    assert telemetry.spans.export is not None
    assert telemetry.spans.export.export_failed == 10
