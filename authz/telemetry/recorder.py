"""Everything one check leaves behind (span, metrics, decision log line,
first-seen signal), put together once per process from the ``OTEL_*``
environment and the server's flags.

Nothing here may slow or fail a check. On the check, only what is cheap
and exact: the decision counters, the duration histogram, the first-seen
test and whether the decision becomes a span (a few µs). Only decisions
with more to do are queued (a bounded deque): spans (every deny, sampled
allows), first-seen log records, and every decision when the decision log
or a shadow policy is on (``shadow``: the candidate set is evaluated there,
after the answer). The transport works through a few of them after each response is
sent (``after_response``), and a thread of its own takes whatever is left
every ``interval`` seconds. Spans then leave through a batch processor with
a bounded queue, the decision log through a bounded queue and a thread of
its own; what does not fit anywhere is dropped and counted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter

from authz import __version__
from authz.core.decision import Decision, Verdict
from authz.core.request import EgressRequest
from authz.telemetry.decision_log import DecisionLog, decision_record
from authz.telemetry.first_seen import FirstSeen
from authz.telemetry.metrics import DecisionMetrics, prometheus_reader
from authz.telemetry.shadow import Shadow
from authz.telemetry.spans import DecisionSpans

__all__ = ["Telemetry", "TelemetryConfig", "from_environment"]

first_seen_log = logging.getLogger("authz.first_seen")
log = logging.getLogger("authz.telemetry")
TraceHeaders = Mapping[str, str] | Callable[[], Mapping[str, str]]
# decision, id, request, trace headers, started, ended, first seen, a span?, its trace id
_Queued = tuple[Decision, str, EgressRequest | None, TraceHeaders, int, int, bool, bool, int | None]


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    environ: Mapping[str, str]
    decision_log: str | None = None  # a path, or "-" for stdout
    decision_log_max_bytes: int = 100 * 2**20
    metrics_port: int | None = None  # a Prometheus scrape endpoint
    first_seen_capacity: int = 100_000
    metrics_bind: str = "127.0.0.1"  # where it listens (0.0.0.0 in a pod, for the scraper)
    interval: float = 0.02  # seconds between the telemetry thread's rounds
    queue_capacity: int = 65_536  # decisions waiting for it; more are dropped and counted

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
        self.shadow = Shadow()  # its policy is set by the server's shadow reloader, if any
        self.metrics = DecisionMetrics(
            resource, readers, self._losses, self.shadow, prometheus=config.metrics_port is not None
        )
        self.first_seen = FirstSeen(config.first_seen_capacity)
        self.queued: deque[_Queued] = deque()
        self.queue_full = 0
        self._flushing = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decision-telemetry", daemon=True)
        self._thread.start()

    def _losses(self) -> dict[str, int]:
        export = self.spans.export
        return {
            "queue_full": export.queue_full if export is not None else 0,
            "export_failed": export.export_failed if export is not None else 0,
            "decision_log_full": self.decision_log.dropped if self.decision_log is not None else 0,
            "decision_log_failed": self.decision_log.failed if self.decision_log is not None else 0,
            "telemetry_queue_full": self.queue_full,
        }

    def record(
        self,
        decision: Decision,
        decision_id: str,
        request: EgressRequest | None,
        trace_headers: TraceHeaders,
        started_ns: int,
        traceparent: str | None = None,
    ) -> None:
        """Count the decision, and queue it when it has more to leave behind.
        ``trace_headers`` may be a function, called off the check; then
        ``traceparent`` is the header's value (read on the check: sampling needs it)."""
        ended_ns = time.time_ns()
        identity = decision.identity
        first = identity is not None and self.first_seen.first(identity, decision.host, decision.port)
        self.metrics.count(decision, (ended_ns - started_ns) / 1e9, first)
        if not callable(trace_headers):
            traceparent = trace_headers.get("traceparent")
        span, trace_id = self.spans.plan(decision.would_verdict is Verdict.DENY, traceparent)
        if not (span or first or self.decision_log is not None or self.shadow.policy is not None):
            return
        if len(self.queued) >= self.config.queue_capacity:
            self.queue_full += 1
            return
        self.queued.append(
            (decision, decision_id, request, trace_headers, started_ns, ended_ns, first, span, trace_id)
        )

    def flush(self) -> None:
        """Process everything queued now (the thread does this every ``interval``)."""
        with self._flushing:
            self._drain(len(self.queued) + 1_000_000)

    def after_response(self, most: int = 4) -> None:
        """Process a few queued decisions now, on the serving thread, once a
        response is on its way: no second thread takes the GIL from the checks
        (one that did cost a third of the throughput under pyvoy). Never waits."""
        if self.queued and self._flushing.acquire(blocking=False):
            try:
                self._drain(most)
            finally:
                self._flushing.release()

    def _drain(self, most: int) -> None:
        queued = self.queued
        while queued and most > 0:
            item = queued.popleft()
            most -= 1
            try:
                self._process(*item)
            except Exception:
                log.exception("telemetry for check %s failed", item[1])

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval):
            self.flush()

    def _process(
        self,
        decision: Decision,
        decision_id: str,
        request: EgressRequest | None,
        trace_headers: TraceHeaders,
        started_ns: int,
        ended_ns: int,
        first: bool,
        span: bool,
        trace_id: int | None,
    ) -> None:
        shadow = self.shadow.decide(decision, request, started_ns)
        span = span or (shadow is not None and shadow.disagrees)  # a disagreement is always a span
        context = None
        if span or self.decision_log is not None:  # (only a shadow's outcome to count: no headers read)
            headers = trace_headers() if callable(trace_headers) else trace_headers
            if span:
                context = self.spans.record(
                    decision, decision_id, request, headers, started_ns, ended_ns, first, trace_id, shadow
                )
            else:
                context = self.spans.unrecorded(headers, trace_id)
        if first:
            first_seen_log.info(
                "first_seen_destination identity=%s destination=%s decision_id=%s verdict=%s",
                decision.identity, decision.destination, decision_id, decision.verdict.value,
            )  # fmt: skip
        if self.decision_log is not None:
            record = decision_record(
                decision, decision_id, request, started_ns, ended_ns, shadow.decision if shadow else None
            )
            record["trace_id"] = format(context.trace_id, "032x") if context is not None else None
            record["span_id"] = format(context.span_id, "016x") if context is not None else None
            record["sampled"] = context.trace_flags.sampled if context is not None else False
            record["first_seen"] = first
            self.decision_log.write(record)

    def shutdown(self) -> None:
        """Process what is queued, then flush spans and the decision log."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()
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
