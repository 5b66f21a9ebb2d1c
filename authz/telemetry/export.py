"""Getting spans out without ever holding a check: a batch processor with a
bounded queue whose losses are counted, and the exporter the ``OTEL_*``
environment names."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

__all__ = ["CountedExport", "span_exporter"]

log = logging.getLogger("authz.telemetry")


class CountedExport(SpanProcessor):
    """A batch span processor whose losses are counted: spans refused because
    ``capacity`` are already waiting (a slow or absent collector), and spans
    of batches the exporter failed to deliver. The SDK's own processor would
    drop the oldest silently (its counters are behind an internal flag)."""

    def __init__(self, exporter: SpanExporter, environ: Mapping[str, str]) -> None:
        settings = _batch_settings(environ)
        self.capacity = settings.get("max_queue_size", 2048)
        self.waiting = self.queue_full = self.export_failed = 0
        self._lock = threading.Lock()
        self._batch = BatchSpanProcessor(
            _Counting(exporter, self),
            max_queue_size=self.capacity,
            schedule_delay_millis=settings.get("schedule_delay_millis"),
            max_export_batch_size=settings.get("max_export_batch_size"),
            export_timeout_millis=settings.get("export_timeout_millis"),
        )

    def on_start(self, span: Any, parent_context: otel_context.Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            if self.waiting >= self.capacity:
                self.queue_full += 1
                return
            self.waiting += 1
        self._batch.on_end(span)

    def exported(self, count: int, result: SpanExportResult) -> None:
        with self._lock:
            self.waiting -= count
            if result is not SpanExportResult.SUCCESS:
                self.export_failed += count

    def shutdown(self) -> None:
        self._batch.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)


class _Counting(SpanExporter):
    """The real exporter, reporting each batch's outcome (on the batch thread)."""

    def __init__(self, exporter: SpanExporter, counts: CountedExport) -> None:
        self.exporter = exporter
        self.counts = counts

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.exporter.export(spans)
        except Exception:
            log.exception("span export failed")
            result = SpanExportResult.FAILURE
        self.counts.exported(len(spans), result)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


def span_exporter(environ: Mapping[str, str]) -> SpanExporter | None:
    """``OTEL_TRACES_EXPORTER``: otlp, console (one JSON span a line) or none.
    Default: otlp when an OTLP endpoint is configured, else none."""
    configured = any(
        key in environ for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    name = environ.get("OTEL_TRACES_EXPORTER", "otlp" if configured else "none").split(",")[0].strip().lower()
    if name == "console":
        return ConsoleSpanExporter(out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n")
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if name != "none":
        log.warning("unknown OTEL_TRACES_EXPORTER %r; traces are off", name)
    return None


def _batch_settings(environ: Mapping[str, str]) -> dict[str, int]:
    """``OTEL_BSP_*`` from the given environment (the SDK would read the process's)."""
    names = {
        "max_queue_size": "OTEL_BSP_MAX_QUEUE_SIZE",
        "schedule_delay_millis": "OTEL_BSP_SCHEDULE_DELAY",
        "max_export_batch_size": "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "export_timeout_millis": "OTEL_BSP_EXPORT_TIMEOUT",
    }
    return {
        argument: int(environ[name]) for argument, name in names.items() if environ.get(name, "").isdigit()
    }
