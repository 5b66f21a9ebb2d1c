"""Everything one check leaves behind (span, metrics, decision log line,
first-seen signal), put together once per process from the ``OTEL_*``
environment and the server's flags.

Nothing here may slow or fail a check. On the check, only what is cheap
and exact: the decision counters, the duration histogram, the first-seen
test (process memory) and whether the decision becomes a span (a few µs). Only decisions
with more to do are queued (a bounded deque): spans (every deny, sampled
allows), first-seen log records, and every decision when the decision log
or a shadow policy is on (``shadow``: the candidate set is evaluated there,
after the answer). The transport works through a few of them after each response is
sent (``after_response``), and a thread of its own takes whatever is left
every ``interval`` seconds. Spans then leave through a batch processor with
a bounded queue, the decision log through a bounded queue and a thread of
its own; what does not fit anywhere is dropped and counted.

With a state store (``--state-store``), a pair new to this process is not yet
a first sighting: its decision goes to the store's writer (``fleet``) on the
worker's event loop, and comes back (``resolved``) with the fleet's judgement
(new, known, or judged locally when the store could not answer) before its
span, log record and decision log line are made. A pair this process knows
costs nothing more.
"""

from __future__ import annotations

import asyncio
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
from authz.core.destination import format_destination
from authz.core.request import EgressRequest
from authz.telemetry.decision_log import DecisionLog, decision_record
from authz.telemetry.first_seen import FirstSeen
from authz.telemetry.fleet import STORE, FleetFirstSeen
from authz.telemetry.metrics import DecisionMetrics, prometheus_reader
from authz.telemetry.shadow import Shadow
from authz.telemetry.spans import DecisionSpans
from authz.telemetry.state_store import DEFAULT_TTL, Sighting, StateStore, pair_key

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
    state_store: str | None = None  # a Redis URL: first sightings judged by the fleet (fleet, state_store)
    first_seen_ttl: float = DEFAULT_TTL  # seconds a pair stays known in the store
    state_store_timeout: float = 1.0  # seconds a round trip to the store may take

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
        self.fleet = (
            FleetFirstSeen(
                StateStore(config.state_store, timeout=config.state_store_timeout),
                config.first_seen_ttl,
                self._judged,
                in_use=self._pairs_in_use,
            )
            if config.state_store
            else None
        )
        self._zoned = self.fleet is not None  # with a store, a pair is (zone, identity, destination)
        if self.fleet is not None:
            self.metrics.observe_state_store(self.fleet.errors, self.fleet.writes, lambda: self.fleet_up)
        self.first_seen = FirstSeen(config.first_seen_capacity)
        self.queued: deque[_Queued] = deque()
        # Decisions back from the store with its judgement: (the queued decision, first, source)
        self.resolved: deque[tuple[_Queued, bool, str]] = deque()
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
        zone = request.zone if self._zoned and request is not None else None
        first = identity is not None and self.first_seen.first(identity, decision.host, decision.port, zone)
        self.metrics.count(decision, (ended_ns - started_ns) / 1e9, first and not self._zoned)
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
            self._drain(len(self.queued) + len(self.resolved) + 1_000_000)

    def after_response(self, most: int = 4) -> None:
        """Process a few queued decisions now, on the serving thread, once a
        response is on its way: no second thread takes the GIL from the checks
        (one that did cost a third of the throughput under pyvoy). Never waits."""
        if (self.queued or self.resolved) and self._flushing.acquire(blocking=False):
            try:
                self._drain(most)
            finally:
                self._flushing.release()

    def _drain(self, most: int) -> None:
        queued, resolved = self.queued, self.resolved
        while (resolved or queued) and most > 0:
            most -= 1
            source: str | None = None
            if resolved:
                item, first, source = resolved.popleft()
                item = (*item[:6], first, item[7], item[8])
            else:
                item = queued.popleft()
            try:
                self._process(*item, source)
            except Exception:
                log.exception("telemetry for check %s failed", item[1])

    def _judged(self, item: _Queued, first: bool, source: str) -> None:
        """The fleet's judgement of a pair new to this process (``fleet``; any thread)."""
        decision, request = item[0], item[2]
        if source == STORE and decision.identity is not None:
            zone = request.zone if request is not None else None
            self.first_seen.judged_by_store(decision.identity, decision.host, decision.port, zone)
        if first:
            self.metrics.first_sighting(decision)
        self.resolved.append((item, first, source))

    def _pairs_in_use(self) -> list[str]:
        """The store's keys of the pairs this process saw since the last call (``fleet``'s refresh)."""
        return [
            pair_key(zone, identity, format_destination(host or "-", port))
            for identity, host, port, zone in self.first_seen.used_since_last_look()
        ]

    @property
    def fleet_up(self) -> bool:
        return self.fleet is not None and self.fleet.up

    def start_state_store(self) -> None:
        """Start the state store's writer on the running event loop (the worker's), if there is a store."""
        if self.fleet is not None:
            self.fleet.start()

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
        source: str | None = None,
    ) -> None:
        if first and source is None and self.fleet is not None:  # new here: is it new to the fleet?
            item = (
                decision,
                decision_id,
                request,
                trace_headers,
                started_ns,
                ended_ns,
                first,
                span,
                trace_id,
            )
            self.fleet.submit(item, _sighting(decision, decision_id, request, started_ns))
            return
        identity = decision.identity
        if source is None and identity is not None:
            zone = request.zone if self._zoned and request is not None else None
            source = self.first_seen.judged_by(identity, decision.host, decision.port, zone)
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
                "first_seen_destination identity=%s destination=%s decision_id=%s verdict=%s source=%s",
                decision.identity, decision.destination, decision_id, decision.verdict.value, source,
            )  # fmt: skip
        if self.decision_log is not None:
            record = decision_record(
                decision, decision_id, request, started_ns, ended_ns, shadow.decision if shadow else None
            )
            record["trace_id"] = format(context.trace_id, "032x") if context is not None else None
            record["span_id"] = format(context.span_id, "016x") if context is not None else None
            record["sampled"] = context.trace_flags.sampled if context is not None else False
            record["first_seen"] = first
            record["first_seen_source"] = (
                source  # who judged it: store (the fleet) or local; null: no identity
            )
            self.decision_log.write(record)

    async def aclose(self) -> None:
        """``shutdown`` from the event loop the state store runs on: what is
        queued goes to the store first, its answers come back within its
        timeout (the rest is judged locally), then everything is flushed."""
        if self.fleet is not None:
            await asyncio.to_thread(self.flush)
            await self.fleet.aclose(grace=self.config.state_store_timeout * 2)
        await asyncio.to_thread(self.shutdown)

    def shutdown(self) -> None:
        """Process what is queued, then flush spans and the decision log.
        (A state store no longer asked: ``aclose`` asks it first.)"""
        self._stop.set()
        self._thread.join(timeout=10)
        if self.fleet is not None:
            self.fleet.abandon()
        self.flush()
        if self.decision_log is not None:
            self.decision_log.close()
        self.spans.shutdown()
        self.metrics.shutdown()


def _sighting(
    decision: Decision, decision_id: str, request: EgressRequest | None, started_ns: int
) -> Sighting:
    """What the store keeps of a first sighting."""
    assert decision.identity is not None
    return Sighting(
        zone=request.zone if request is not None else None,
        identity=decision.identity,
        destination=decision.destination,
        time=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started_ns / 1e9))
        + f".{started_ns % 10**9 // 10**6:03d}Z",
        decision_id=decision_id,
        verdict=decision.verdict.value,
    )


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
    *,
    state_store: str | None = None,
    first_seen_ttl: float = DEFAULT_TTL,
    state_store_timeout: float = 1.0,
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
        state_store=state_store or None,
        first_seen_ttl=first_seen_ttl,
        state_store_timeout=state_store_timeout,
    )
    if config.disabled and decision_log is None and metrics_port is None and not state_store:
        return None
    return Telemetry(config)
