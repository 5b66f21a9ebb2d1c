"""Everything one check leaves behind (span, metrics, decision log line,
first-seen signal), put together once per process from the ``OTEL_*``
environment and the server's flags.

Nothing here may slow or fail a check: spans leave through a batch
processor with a bounded queue, the decision log through a bounded queue and
a thread of its own; what does not fit is dropped and counted.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter

from authz import __version__
from authz.core.decision import Decision
from authz.core.request import EgressRequest
from authz.telemetry.decision_log import DecisionLog, decision_record
from authz.telemetry.first_seen import FirstSeen
from authz.telemetry.metrics import DecisionMetrics, prometheus_reader
from authz.telemetry.spans import DecisionSpans

__all__ = ["Telemetry", "TelemetryConfig", "from_environment"]

first_seen_log = logging.getLogger("authz.first_seen")


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    environ: Mapping[str, str]
    decision_log: str | None = None  # a path, or "-" for stdout
    decision_log_max_bytes: int = 100 * 2**20
    metrics_port: int | None = None  # a Prometheus scrape endpoint
    first_seen_capacity: int = 100_000
    metrics_bind: str = "127.0.0.1"  # where it listens (0.0.0.0 in a pod, for the scraper)

    @property
    def disabled(self) -> bool:
        return self.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


class Telemetry:
    """The check's telemetry. ``span_exporter``, ``span_processor`` and
    ``metric_readers`` replace what the environment would choose (tests)."""

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        span_exporter: SpanExporter | None = None,
        span_processor: SpanProcessor | None = None,
        metric_readers: Sequence[MetricReader] = (),
    ) -> None:
        self.config = config
        resource = Resource.create(_resource_attributes(config.environ))
        self.spans = DecisionSpans(
            resource,
            config.environ,
            enabled=not config.disabled,
            exporter=span_exporter,
            processor=span_processor,
        )
        self.decision_log = (
            DecisionLog(config.decision_log, max_bytes=config.decision_log_max_bytes)
            if config.decision_log
            else None
        )
        readers = list(metric_readers)
        if config.metrics_port is not None:
            readers.append(prometheus_reader(config.metrics_port, config.metrics_bind))
        self.metrics = DecisionMetrics(resource, readers, self._losses)
        self.first_seen = FirstSeen(config.first_seen_capacity)

    def _losses(self) -> dict[str, int]:
        export = self.spans.export
        return {
            "queue_full": export.queue_full if export is not None else 0,
            "export_failed": export.export_failed if export is not None else 0,
            "decision_log_full": self.decision_log.dropped if self.decision_log is not None else 0,
        }

    def record(
        self,
        decision: Decision,
        decision_id: str,
        request: EgressRequest | None,
        trace_headers: Mapping[str, str],
        started_ns: int,
    ) -> None:
        ended_ns = time.time_ns()
        first = decision.identity is not None and self.first_seen.first(
            decision.identity, decision.destination
        )
        context = self.spans.record(
            decision, decision_id, request, trace_headers, started_ns, ended_ns, first
        )
        self.metrics.count(decision, (ended_ns - started_ns) / 1e9, first)
        if first:
            first_seen_log.info(
                "first_seen_destination identity=%s destination=%s decision_id=%s verdict=%s",
                decision.identity, decision.destination, decision_id, decision.verdict.value,
            )  # fmt: skip
        if self.decision_log is not None:
            record = decision_record(decision, decision_id, request, started_ns, ended_ns)
            record["trace_id"] = format(context.trace_id, "032x") if context is not None else None
            record["span_id"] = format(context.span_id, "016x") if context is not None else None
            record["sampled"] = context.trace_flags.sampled if context is not None else False
            record["first_seen"] = first
            self.decision_log.write(record)

    def shutdown(self) -> None:
        """Flush spans and the decision log."""
        if self.decision_log is not None:
            self.decision_log.close()
        self.spans.shutdown()
        self.metrics.shutdown()


def _resource_attributes(environ: Mapping[str, str]) -> dict[str, str]:
    """Our service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name
    one (the SDK merges those in, but attributes given here would win)."""
    attributes = {"service.version": __version__}
    named = "OTEL_SERVICE_NAME" in environ or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not named:
        attributes["service.name"] = "egress-authz"
    return attributes


def from_environment(
    decision_log: str | None,
    decision_log_max_bytes: int,
    metrics_port: int | None,
    first_seen_capacity: int,
    metrics_bind: str = "127.0.0.1",
) -> Telemetry | None:
    """The server's telemetry; None when ``OTEL_SDK_DISABLED=true`` and no
    decision log or metrics endpoint is asked for, so that a check pays nothing."""
    config = TelemetryConfig(
        dict(os.environ),
        decision_log,
        decision_log_max_bytes,
        metrics_port,
        first_seen_capacity,
        metrics_bind,
    )
    if config.disabled and decision_log is None and metrics_port is None:
        return None
    return Telemetry(config)
