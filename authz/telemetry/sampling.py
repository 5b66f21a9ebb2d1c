"""Which decision spans are recorded: every deny and dry-run would-deny
(the security signal), every disagreement of the shadow policy, and allows
as ``OTEL_TRACES_SAMPLER`` says."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.sdk.trace.sampling import Decision as SamplingDecision
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

__all__ = ["DEFAULT_RATIO", "SHADOW_DISAGREES", "WOULD_DENY", "DecisionSampler", "sampler_from_env"]

#: The attribute namespace where OTel has no convention.
NS = "egress_authz."
WOULD_DENY = NS + "would_deny"
SHADOW_DISAGREES = NS + "shadow.disagrees"
DEFAULT_RATIO = 0.01
log = logging.getLogger("authz.telemetry")


class DecisionSampler(Sampler):
    """Denies, dry-run would-denies and the shadow policy's disagreements are
    always recorded. Allows follow the configured sampler (parent-based by default)."""

    def __init__(self, allows: Sampler, root_ratio: TraceIdRatioBased | None = None) -> None:
        self.allows = allows
        # A parent-based sampler with its default delegates drops every span
        # whose remote parent is not sampled: telemetry skips making those.
        self.follows_parent = isinstance(allows, ParentBased)
        # How an allow without a parent is sampled, when it is by trace-id ratio:
        # telemetry rolls that dice itself before making a span (most are dropped).
        self.root_ratio = root_ratio

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
        if attributes is not None and (attributes.get(WOULD_DENY) or attributes.get(SHADOW_DISAGREES)):
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
    by_ratio = TraceIdRatioBased(ratio)
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": by_ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(by_ratio),
    }
    if name not in samplers:
        log.warning("unknown OTEL_TRACES_SAMPLER %r; using parentbased_traceidratio", name)
        name = "parentbased_traceidratio"
    return DecisionSampler(samplers[name], by_ratio if name.endswith("traceidratio") else None)
