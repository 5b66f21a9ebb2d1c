"""The scorecard's metrics: decisions by reason, check duration, identity
coverage, unknown destinations, first-seen destinations, telemetry losses."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource

from authz import __version__
from authz.core.decision import Decision, Reason

__all__ = ["DecisionMetrics", "prometheus_reader"]

_UNVERIFIED = frozenset({Reason.NO_IDENTITY, Reason.INVALID_IDENTITY})
_NO_MATCHING_RULE = Reason.NO_MATCHING_RULE


class DecisionMetrics:
    """Counted in plain integers and a dict, observed at collection: a
    synchronous counter's add() with attributes costs ~11 µs a check."""

    def __init__(
        self,
        resource: Resource,
        readers: Sequence[MetricReader],
        losses: Callable[[], Mapping[str, int]],
    ) -> None:
        # No exemplars: each would look up the current span on every record;
        # the decision spans are the link from metrics to traces here.
        self.provider = MeterProvider(
            resource=resource, metric_readers=list(readers), exemplar_filter=AlwaysOffExemplarFilter()
        )
        self.checks = self.identified = self.unknown_destination = 0
        self.decision_counts: Counter[tuple[str, str, str, str]] = Counter()
        self.exception_uses: Counter[tuple[str, str]] = Counter()
        self._losses = losses
        self._policy_version: Callable[[], str | None] = lambda: None
        self._reloads: Callable[[], Mapping[str, int]] = dict
        meter = self.provider.get_meter("egress-authz", __version__)
        meter.create_observable_counter(
            "egress_authz.decisions",
            [self._decisions],
            unit="{decision}",
            description="Decisions by verdict, reason, policy and mode",
        )
        self.duration = meter.create_histogram(
            "egress_authz.check.duration", unit="s", description="Time to decide a check, server side"
        )
        self.first_seen = meter.create_counter(
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
            "egress_authz.exception.uses",
            [self._exceptions],
            unit="{decision}",
            description="Requests allowed by a break-glass exception, by policy and exception",
        )
        meter.create_observable_gauge(
            "egress_authz.policy.info",
            [self._policy_info],
            unit="1",
            description="1, labelled with the policy version this process serves",
        )
        meter.create_observable_counter(
            "egress_authz.policy.reloads",
            [self._reload_counts],
            unit="{reload}",
            description="Policy reloads by result: applied, rejected (a bad change), unchanged, retried",
        )
        meter.create_observable_counter(
            "egress_authz.spans.dropped",
            [self._dropped],
            unit="{span}",
            description="Spans and log records lost",
        )

    def count(self, decision: Decision, seconds: float, first: bool) -> None:
        reason = decision.reason
        self.decision_counts[(decision.verdict, reason, decision.policy or "", decision.mode)] += 1
        self.duration.record(seconds)
        self.checks += 1
        if decision.identity is not None and reason not in _UNVERIFIED:
            self.identified += 1
        if reason is _NO_MATCHING_RULE or decision.dry_run_reason is _NO_MATCHING_RULE:
            self.unknown_destination += 1
        if first:
            self.first_seen.add(1)
        if decision.exception is not None and decision.reason is Reason.ALLOWED_BY_EXCEPTION:
            self.exception_uses[(decision.policy or "", decision.exception)] += 1

    def observe_policy(
        self, version: Callable[[], str | None], reloads: Callable[[], Mapping[str, int]]
    ) -> None:
        """Where the served policy version and the reload counts are read at collection."""
        self._policy_version, self._reloads = version, reloads

    def shutdown(self) -> None:
        self.provider.shutdown()

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

    def _exceptions(self, _options: CallbackOptions) -> list[Observation]:
        return [
            Observation(count, {"policy": policy, "exception": exception})
            for (policy, exception), count in list(self.exception_uses.items())
        ]

    def _policy_info(self, _options: CallbackOptions) -> list[Observation]:
        version = self._policy_version()
        return [Observation(1, {"policy_version": version})] if version is not None else []

    def _reload_counts(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(count, {"result": result}) for result, count in dict(self._reloads()).items()]

    def _dropped(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(count, {"cause": cause}) for cause, count in self._losses().items()]


def prometheus_reader(port: int, address: str = "127.0.0.1") -> MetricReader:
    """A Prometheus scrape endpoint on ``address``:``port``."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    start_http_server(port, addr=address)
    return PrometheusMetricReader()
