"""A decision as an OpenTelemetry span, a child of the caller's trace when
the checked request carried W3C trace context."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from authz import __version__
from authz.core.decision import Decision, Verdict
from authz.core.request import EgressRequest
from authz.telemetry.export import CountedExport, span_exporter
from authz.telemetry.sampling import NS, SHADOW_DISAGREES, WOULD_DENY, sampler_from_env
from authz.telemetry.shadow import ShadowOutcome

__all__ = ["SPAN_NAME", "DecisionSpans", "parent_span_context", "span_attributes"]

#: Not the RPC's own name (``envoy.service.auth.v3.Authorization/Check``): the
#: span is the decision inside the *caller's* trace, not the Envoy-to-authz call.
SPAN_NAME = "egress.authz.check"
_propagator = TraceContextTextMapPropagator()
_TRACEPARENT_V00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


class DecisionSpans:
    """The tracer provider, its sampler and its export, built once per process."""

    def __init__(
        self,
        resource: Resource,
        environ: Mapping[str, str],
        *,
        enabled: bool = True,
        exporter: SpanExporter | None = None,
        processor: SpanProcessor | None = None,
    ) -> None:
        self.sampler = sampler_from_env(environ)
        self.ids = _PresetIds()
        self._dice = RandomIdGenerator()  # trace ids drawn on the check, never the preset
        self.provider = TracerProvider(resource=resource, sampler=self.sampler, id_generator=self.ids)
        self.export: CountedExport | None = None
        exporter = exporter if exporter is not None else span_exporter(environ)
        if processor is not None:
            self.provider.add_span_processor(processor)
        elif exporter is not None:
            self.export = CountedExport(exporter, environ)
            self.provider.add_span_processor(self.export)
        # OTEL_SDK_DISABLED=true: no spans at all.
        self.tracer = self.provider.get_tracer("egress-authz", __version__) if enabled else None

    def plan(self, would_deny: bool, traceparent: str | None) -> tuple[bool, int | None]:
        """Whether the decision becomes a span, decided on the check, cheaply
        (making a span only to have the sampler drop it costs ~12 µs), and the
        trace id it has if known: an unsampled caller's, or the one the ratio
        sampler's dice were rolled on. Denies are always spans."""
        if self.tracer is None:
            return False, None
        if would_deny:
            return True, None
        if traceparent is not None:
            # An unsampled caller's trace (the usual case) is told by its shape;
            # its trace id is read off the check, if the decision log wants it.
            unsampled = (
                len(traceparent) == 55 and traceparent.endswith("-00") and traceparent.startswith("00-")
            )
            return not (unsampled and self.sampler.follows_parent), None
        ratio = self.sampler.root_ratio
        if ratio is None:
            return True, None
        rolled = self._dice.generate_trace_id()
        return rolled & TraceIdRatioBased.TRACE_ID_LIMIT < ratio.bound, rolled

    def record(
        self,
        decision: Decision,
        decision_id: str,
        request: EgressRequest | None,
        trace_headers: Mapping[str, str],
        started_ns: int,
        ended_ns: int,
        first: bool,
        trace_id: int | None = None,
        shadow: ShadowOutcome | None = None,
    ) -> trace.SpanContext | None:
        """The decision as a span (``plan`` said so, or the shadow policy
        disagrees); ``trace_id`` is the one the dice were rolled on, if any.
        Only recorded spans get attributes."""
        if self.tracer is None:
            return None
        parent = parent_span_context(trace_headers) if "traceparent" in trace_headers else None
        self.ids.preset = trace_id if parent is None else None
        sampled: dict[str, Any] = {WOULD_DENY: decision.would_verdict is Verdict.DENY}
        if shadow is not None:
            sampled[SHADOW_DISAGREES] = shadow.disagrees
        span = self.tracer.start_span(
            SPAN_NAME,
            context=trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent is not None else None,
            kind=SpanKind.SERVER,
            attributes=sampled,
            start_time=started_ns,
        )
        self.ids.preset = None
        if span.is_recording():
            span.set_attributes(span_attributes(decision, decision_id, request))
            if shadow is not None:
                span.set_attributes(
                    {
                        NS + "shadow.verdict": shadow.decision.verdict.value,
                        NS + "shadow.reason": shadow.decision.reason.value,
                        NS + "shadow.policy_version": shadow.decision.policy_version,
                    }
                )
            if first:
                event: dict[str, str | int] = {NS + "identity": str(decision.identity),
                                               "server.address": decision.host or "", "server.port": decision.port or 0}  # fmt: skip
                span.add_event("first_seen_destination", event, timestamp=ended_ns)
        span.end(end_time=ended_ns)
        return span.get_span_context()

    def unrecorded(self, trace_headers: Mapping[str, str], trace_id: int | None) -> trace.SpanContext | None:
        """Ids for a decision that is not a span (the decision log still
        names them): the caller's unsampled trace, the dice's, or a new one."""
        if self.tracer is None:
            return None
        trace_id = trace_id or _unsampled_parent(trace_headers.get("traceparent"))
        return trace.SpanContext(
            trace_id or self.ids.generate_trace_id(), self.ids.generate_span_id(), is_remote=False
        )

    def shutdown(self) -> None:
        self.provider.shutdown()


class _PresetIds(RandomIdGenerator):
    """Random ids, but the next trace id may be set in advance (the one the
    sampling dice were rolled on). Only the telemetry thread makes spans."""

    def __init__(self) -> None:
        self.preset: int | None = None

    def generate_trace_id(self) -> int:
        preset, self.preset = self.preset, None
        return preset if preset is not None else super().generate_trace_id()


def _unsampled_parent(traceparent: str | None) -> int | None:
    """The trace id of a version-00 ``traceparent`` whose sampled flag is off, else None."""
    if traceparent is None or len(traceparent) != 55 or not traceparent.endswith("-00"):
        return None
    match = _TRACEPARENT_V00.fullmatch(traceparent)
    if match is None:
        return None
    trace_id = int(match[1], 16)
    return trace_id if trace_id and int(match[2], 16) else None


def parent_span_context(headers: Mapping[str, str]) -> trace.SpanContext | None:
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


def span_attributes(decision: Decision, decision_id: str, request: EgressRequest | None) -> dict[str, Any]:
    """Semantic-convention names where OTel has them, ``egress_authz.*`` for the rest."""
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
        NS + "exception": decision.exception,
        NS + "exception_owner": decision.exception_owner,
        NS + "ticket": decision.ticket,
        NS + "revocation": decision.revocation,
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
