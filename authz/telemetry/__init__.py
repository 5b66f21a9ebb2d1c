"""Decision telemetry, one concern a module: ``sampling`` (which spans are
kept), ``export`` (getting them out, losses counted), ``spans`` (a decision
as a span in the caller's trace), ``metrics`` (the scorecard's instruments),
``durations`` (the check-time histogram, in buckets a check can fill),
``decision_log`` (JSON lines), ``first_seen`` (new destinations), ``shadow``
(a candidate policy set evaluated after each answer), and ``recorder`` (all
of them for one check).

Configured by the standard ``OTEL_*`` environment (``OTEL_SDK_DISABLED``,
``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_*``, ``OTEL_TRACES_SAMPLER*``,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*``) and the
server's flags for the decision log and the Prometheus endpoint. Imports the
core only.
"""

from authz.telemetry.decision_log import DecisionLog, decision_record
from authz.telemetry.first_seen import FirstSeen
from authz.telemetry.recorder import Telemetry, TelemetryConfig, from_environment
from authz.telemetry.sampling import DecisionSampler, sampler_from_env
from authz.telemetry.spans import SPAN_NAME

__all__ = [
    "SPAN_NAME",
    "DecisionLog",
    "DecisionSampler",
    "FirstSeen",
    "Telemetry",
    "TelemetryConfig",
    "decision_record",
    "from_environment",
    "sampler_from_env",
]
