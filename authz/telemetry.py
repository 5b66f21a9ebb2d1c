"""Decision telemetry: an OpenTelemetry span per check, joined to the
caller's trace; metrics for the egress scorecard; a JSON-lines decision log;
first-seen destinations.

Nothing here may slow or fail a check: spans leave through a batch
processor with a bounded queue, the decision log through a bounded queue and
a thread of its own; what does not fit is dropped and counted.

Configuration is the standard ``OTEL_*`` environment (``OTEL_SDK_DISABLED``,
``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_TRACES_SAMPLER*``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*``), plus the
server's flags for the decision log and the Prometheus endpoint.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.sdk.trace.sampling import (
    Decision as SamplingDecision,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from authz import __version__
from authz.decision import Decision, Reason, Verdict
from authz.request import EgressRequest

__all__ = [
    "SPAN_NAME",
    "decision_record",
    "from_environment",
    "DecisionLog",
    "DecisionSampler",
    "FirstSeen",
    "Telemetry",
    "TelemetryConfig",
    "sampler_from_env",
]

#: Not the RPC's own name (``envoy.service.auth.v3.Authorization/Check``): the
#: span is the decision inside the *caller's* trace, not the Envoy-to-authz call.
SPAN_NAME = "egress.authz.check"
NS = "egress_authz."  # the attribute namespace where OTel has no convention
WOULD_DENY = NS + "would_deny"
DEFAULT_RATIO = 0.01
log = logging.getLogger("authz.telemetry")
first_seen_log = logging.getLogger("authz.first_seen")
_propagator = TraceContextTextMapPropagator()


class DecisionSampler(Sampler):
    """Denies and dry-run would-denies are the security signal: always
    recorded. Allows follow the configured sampler (parent-based by default)."""

    def __init__(self, allows: Sampler) -> None:
        self.allows = allows
        # A parent-based sampler with its default delegates drops every span
        # whose remote parent is not sampled: telemetry skips making those.
        self.follows_parent = isinstance(allows, ParentBased)

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if attributes is not None and attributes.get(WOULD_DENY):
            parent = trace.get_current_span(parent_context).get_span_context()
            return SamplingResult(SamplingDecision.RECORD_AND_SAMPLE, attributes, parent.trace_state)
        return self.allows.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"DecisionSampler{{denies: always, allows: {self.allows.get_description()}}}"


def sampler_from_env(environ: Mapping[str, str]) -> DecisionSampler:
    """``OTEL_TRACES_SAMPLER`` for allows; default parent-based 1% (``OTEL_TRACES_SAMPLER_ARG``)."""
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_traceidratio").lower()
    try:
        ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", DEFAULT_RATIO))
    except ValueError:
        log.warning("OTEL_TRACES_SAMPLER_ARG is not a number; using %s", DEFAULT_RATIO)
        ratio = DEFAULT_RATIO
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    if name not in samplers:
        log.warning("unknown OTEL_TRACES_SAMPLER %r; using parentbased_traceidratio", name)
        name = "parentbased_traceidratio"
    return DecisionSampler(samplers[name])


class _CountedExport(SpanProcessor):
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

    def __init__(self, exporter: SpanExporter, counts: _CountedExport) -> None:
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


def _span_exporter(environ: Mapping[str, str]) -> SpanExporter | None:
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


class DecisionLog:
    """JSON lines, one per decision, written by a thread of its own from a
    bounded queue; a file is rotated past ``max_bytes`` (``backups`` kept)."""

    def __init__(
        self, target: str, *, max_bytes: int = 100 * 2**20, backups: int = 3, capacity: int = 10_000
    ) -> None:
        self.target = target
        self.max_bytes = max_bytes
        self.backups = backups
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(capacity)
        self._file: TextIO | None = None
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _open(self) -> TextIO:
        if self.target == "-":
            return sys.stdout
        return open(self.target, "a", encoding="utf-8")

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        path = Path(self.target)
        for index in range(self.backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{index + 1}"))
        if self.backups > 0:
            path.replace(path.with_name(f"{path.name}.1"))
        else:
            path.unlink()
        self._file = self._open()

    def _run(self) -> None:
        self._file = self._open()
        while True:
            record = self._queue.get()
            if record is None:
                break
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            if self.target != "-" and self._file.tell() > self.max_bytes:
                self._rotate()
            elif self._queue.empty():
                self._file.flush()
        self._file.flush()
        if self._file is not sys.stdout:
            self._file.close()


class FirstSeen:
    """Which (identity, destination) pairs this process has seen, the most
    recent ``capacity`` of them: memory stays bounded, and a pair evicted
    long ago may be reported again (across replicas, the collector joins)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, identity: str, destination: str) -> bool:
        key = (identity, destination)
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
            return True


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    environ: Mapping[str, str]
    decision_log: str | None = None  # a path, or "-" for stdout
    decision_log_max_bytes: int = 100 * 2**20
    metrics_port: int | None = None  # a Prometheus scrape endpoint on 127.0.0.1
    first_seen_capacity: int = 100_000

    @property
    def disabled(self) -> bool:
        return self.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


class Telemetry:
    """Everything one check leaves behind. Built once per process."""

    def __init__(
        self,
        config: TelemetryConfig,
        *,
        span_exporter: SpanExporter | None = None,
        span_processor: SpanProcessor | None = None,
        metric_readers: Sequence[MetricReader] = (),
    ) -> None:
        self.config = config
        self.export: _CountedExport | None = None
        self.checks = self.identified = self.unknown_destination = 0
        resource = Resource.create(_resource_attributes(config.environ))
        readers = list(metric_readers)
        if config.metrics_port is not None:
            readers.append(_prometheus_reader(config.metrics_port))
        self.meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        self.sampler = sampler_from_env(config.environ)
        self.tracer_provider = TracerProvider(resource=resource, sampler=self.sampler)
        exporter = span_exporter if span_exporter is not None else _span_exporter(config.environ)
        if span_processor is not None:
            self.tracer_provider.add_span_processor(span_processor)
        elif exporter is not None:
            self.export = _CountedExport(exporter, config.environ)
            self.tracer_provider.add_span_processor(self.export)
        # OTEL_SDK_DISABLED=true: no spans at all (the decision log, when asked for, still runs).
        self.tracer = (
            None if config.disabled else self.tracer_provider.get_tracer("egress-authz", __version__)
        )
        self.decision_log = (
            DecisionLog(config.decision_log, max_bytes=config.decision_log_max_bytes)
            if config.decision_log
            else None
        )
        self.first_seen = FirstSeen(config.first_seen_capacity)
        meter = self.meter_provider.get_meter("egress-authz", __version__)
        # Counted in a plain dict and observed at collection: a synchronous
        # counter's add() with attributes costs ~11 µs a check on this Python.
        self.decision_counts: Counter[tuple[str, str, str, str]] = Counter()
        meter.create_observable_counter(
            "egress_authz.decisions",
            [self._decisions],
            unit="{decision}",
            description="Decisions by verdict, reason, policy and mode",
        )
        self.duration = meter.create_histogram(
            "egress_authz.check.duration", unit="s", description="Time to decide a check, server side"
        )
        self.first_seen_count = meter.create_counter(
            "egress_authz.first_seen_destinations",
            unit="{destination}",
            description="New (identity, destination) pairs",
        )
        meter.create_observable_gauge(
            "egress_authz.identity.coverage",
            [self._coverage],
            unit="1",
            description="Share of checks with a verified identity",
        )
        meter.create_observable_gauge(
            "egress_authz.destination.unknown_ratio",
            [self._unknown_ratio],
            unit="1",
            description="Share of checks that matched no rule",
        )
        meter.create_observable_counter(
            "egress_authz.spans.dropped",
            [self._dropped],
            unit="{span}",
            description="Spans and log records lost",
        )

    # -- observable instruments ----------------------------------------------

    def _decisions(self, _options: CallbackOptions) -> list[Observation]:
        return [
            Observation(
                count, {"verdict": str(verdict), "reason": str(reason), "policy": policy, "mode": str(mode)}
            )
            for (verdict, reason, policy, mode), count in list(self.decision_counts.items())
        ]

    def _coverage(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self.identified / self.checks)] if self.checks else []

    def _unknown_ratio(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self.unknown_destination / self.checks)] if self.checks else []

    def _dropped(self, _options: CallbackOptions) -> list[Observation]:
        export = self.export
        return [
            Observation(export.queue_full if export is not None else 0, {"cause": "queue_full"}),
            Observation(export.export_failed if export is not None else 0, {"cause": "export_failed"}),
            Observation(
                self.decision_log.dropped if self.decision_log is not None else 0,
                {"cause": "decision_log_full"},
            ),
        ]

    # -- the hot path ------------------------------------------------------------

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
        context = self._span(decision, decision_id, request, trace_headers, started_ns, ended_ns, first)
        self.decision_counts[(decision.verdict, decision.reason, decision.policy or "", decision.mode)] += 1
        self.duration.record((ended_ns - started_ns) / 1e9)
        self.checks += 1
        self.identified += decision.identity is not None and decision.reason not in _UNVERIFIED
        self.unknown_destination += decision.reason is Reason.NO_MATCHING_RULE or (
            decision.dry_run_reason is Reason.NO_MATCHING_RULE
        )
        if first:
            self.first_seen_count.add(1)
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

    def _span(
        self,
        decision: Decision,
        decision_id: str,
        request: EgressRequest | None,
        trace_headers: Mapping[str, str],
        started_ns: int,
        ended_ns: int,
        first: bool,
    ) -> trace.SpanContext | None:
        """The decision's span, a child of the caller's trace when the request
        carried W3C trace context. Only recorded spans get their attributes."""
        if self.tracer is None:
            return None
        parent = _parent_span_context(trace_headers) if trace_headers else None
        would_deny = decision.would_verdict is Verdict.DENY
        if (
            not would_deny
            and parent is not None
            and not parent.trace_flags.sampled
            and self.sampler.follows_parent
        ):
            # The sampler would drop this allow (its caller's trace is not
            # sampled): skip making a span only to drop it, ~12 µs a check.
            span_id = self.tracer_provider.id_generator.generate_span_id()
            return trace.SpanContext(
                parent.trace_id, span_id, is_remote=False, trace_state=parent.trace_state
            )
        span = self.tracer.start_span(
            SPAN_NAME,
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None,
            kind=SpanKind.SERVER,
            attributes={WOULD_DENY: would_deny},
            start_time=started_ns,
        )
        if span.is_recording():
            span.set_attributes(_span_attributes(decision, decision_id, request))
            if first:
                event: dict[str, str | int] = {NS + "identity": str(decision.identity),
                                               "server.address": decision.host or "", "server.port": decision.port or 0}  # fmt: skip
                span.add_event("first_seen_destination", event, timestamp=ended_ns)
        span.end(end_time=ended_ns)
        return span.get_span_context()

    def shutdown(self) -> None:
        if self.decision_log is not None:
            self.decision_log.close()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


_UNVERIFIED = frozenset({Reason.NO_IDENTITY, Reason.INVALID_IDENTITY})
_TRACEPARENT_V00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _parent_span_context(headers: Mapping[str, str]) -> trace.SpanContext | None:
    """The caller's span from W3C trace context, None when absent or invalid.
    Version 00 is parsed here (the propagator's extract costs ~11 µs a check,
    this ~3); anything else goes to the propagator."""
    match = _TRACEPARENT_V00.fullmatch(headers.get("traceparent", ""))
    if match is None:
        parent = trace.get_current_span(_propagator.extract(headers)).get_span_context()
        return parent if parent.is_valid else None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if trace_id == 0 or span_id == 0:
        return None
    state = headers.get("tracestate")
    return trace.SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=trace.TraceFlags(int(match[3], 16)),
        trace_state=trace.TraceState.from_header([state]) if state else None,
    )


def _span_attributes(decision: Decision, decision_id: str, request: EgressRequest | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        NS + "decision_id": decision_id,
        NS + "verdict": decision.verdict.value,
        NS + "reason": decision.reason.value,
        NS + "mode": decision.mode.value,
        NS + "policy_version": decision.policy_version,
    }
    optional: dict[str, Any] = {
        NS + "identity": decision.identity,
        NS + "policy": decision.policy,
        NS + "rule": decision.rule,
        NS + "owner": decision.owner,
        NS + "change_ref": decision.change_ref,
        NS + "dry_run_reason": decision.dry_run_reason.value if decision.dry_run_reason else None,
        "server.address": decision.host,
        "server.port": decision.port,
    }
    if request is not None:
        optional |= {
            "tls.client.server_name": request.sni,
            "http.request.method": request.method,
            "url.path": request.path.partition("?")[0] if request.path else None,
            NS + "zone": request.zone,
        }
    attributes.update((key, value) for key, value in optional.items() if value is not None)
    return attributes


def decision_record(
    decision: Decision, decision_id: str, request: EgressRequest | None, started_ns: int, ended_ns: int
) -> dict[str, Any]:
    """The decision log's record: the span's fields under stable keys, and the
    input of a later inventory command (observed flows to a proposed policy)."""
    record = decision.to_dict()
    record.update(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started_ns / 1e9))
            + f".{started_ns % 10**9 // 10**6:03d}Z",
            "decision_id": decision_id,
            "duration_ms": round((ended_ns - started_ns) / 1e6, 3),
            "sni": request.sni if request is not None else None,
            "method": request.method if request is not None else None,
            "path": request.path if request is not None else None,
            "zone": request.zone if request is not None else None,
            "service_version": __version__,
        }
    )
    return record


def _resource_attributes(environ: Mapping[str, str]) -> dict[str, str]:
    """Our service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name
    one (the SDK merges those in, but attributes given here would win)."""
    attributes = {"service.version": __version__}
    named = "OTEL_SERVICE_NAME" in environ or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not named:
        attributes["service.name"] = "egress-authz"
    return attributes


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


def _prometheus_reader(port: int) -> MetricReader:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    start_http_server(port, addr="127.0.0.1")
    return PrometheusMetricReader()


def from_environment(
    decision_log: str | None, decision_log_max_bytes: int, metrics_port: int | None, first_seen_capacity: int
) -> Telemetry | None:
    """The server's telemetry; None when ``OTEL_SDK_DISABLED=true`` and no
    decision log is asked for, so that a check pays nothing for it."""
    config = TelemetryConfig(
        dict(os.environ), decision_log, decision_log_max_bytes, metrics_port, first_seen_capacity
    )
    if config.disabled and decision_log is None and metrics_port is None:
        return None
    return Telemetry(config)
