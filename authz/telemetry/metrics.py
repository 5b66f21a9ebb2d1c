"""The scorecard's metrics: decisions by reason, check duration (``durations``),
identity coverage, unknown destinations, first-seen destinations, telemetry
losses, exception uses and expiries, and the shadow policy's checks,
disagreements and reloads.

Labels stay bounded: a policy's name and its ``owner`` (so that Alertmanager
can route an alert to the team that owns the policy), never an identity or a
host. deploy/monitoring's alert rules and dashboard read these names."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource
from prometheus_client import REGISTRY

from authz import __version__
from authz.core.compiled import CompiledPolicy
from authz.core.decision import Decision, Mode, Reason, Verdict
from authz.telemetry.durations import CheckDurations
from authz.telemetry.shadow import Shadow

__all__ = ["DecisionMetrics", "prometheus_reader"]

_UNVERIFIED = frozenset({Reason.NO_IDENTITY, Reason.INVALID_IDENTITY})
# Label sets a metric may have before the SDK folds the rest into one otel_metric_overflow series (its
# default is 2,000: 10,000 policies' decisions would mostly vanish into it, and every alert per policy
# with them). Ours are bounded by the policy set (at most about ten a policy), never by traffic.
SERIES_LIMIT = 1_000_000
_NO_MATCHING_RULE = Reason.NO_MATCHING_RULE


class DecisionMetrics:
    """Counted in plain integers and a dict, observed at collection: a
    synchronous counter's add() with attributes costs ~11 µs a check."""

    def __init__(
        self,
        resource: Resource,
        readers: Sequence[MetricReader],
        losses: Callable[[], Mapping[str, int]],
        shadow: Shadow | None = None,
        *,
        prometheus: bool = False,
    ) -> None:
        # No exemplars: each would look up the current span on every record;
        # the decision spans are the link from metrics to traces here.
        self.provider = MeterProvider(
            resource=resource,
            metric_readers=list(readers),
            exemplar_filter=AlwaysOffExemplarFilter(),
            views=[View(instrument_name="egress_authz.*", aggregation_cardinality_limit=SERIES_LIMIT)],
        )
        # (verdict, reason, policy, owner, mode, dry-run reason, has an identity): checks
        self.counts: Counter[tuple[Verdict, Reason, str | None, str | None, Mode, Reason | None, bool]] = (
            Counter()
        )
        self.exception_uses: Counter[tuple[str, str]] = Counter()
        self.first_seen: Counter[tuple[str, str]] = Counter()  # by (policy, owner)
        self._losses = losses
        self.durations = CheckDurations()
        self._registered = prometheus  # the durations' collector, beside the OTel exporter's
        if prometheus:
            REGISTRY.register(self.durations)
        self._policy: Callable[[], CompiledPolicy | None] = lambda: None
        self._reloads: Callable[[], Mapping[str, int]] = dict
        self._rejected: Callable[[], bool] = lambda: False
        self._expiries: tuple[str | None, list[Observation]] = (None, [])  # by policy version
        self._refused_callers: Mapping[str, int] = {}
        self.shadow = shadow or Shadow()
        self._shadow_reloads: Callable[[], Mapping[str, int]] = dict
        meter = self.provider.get_meter("egress-authz", __version__)
        meter.create_observable_counter(
            "egress_authz.decisions",
            [self._decisions],
            unit="{decision}",
            description="Decisions by verdict, reason, policy, owner and mode",
        )
        meter.create_observable_counter(
            "egress_authz.first_seen_destinations",
            [self._first_seen],
            unit="{destination}",
            description="New (identity, destination) pairs, by the policy and owner that decided them",
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
            "egress_authz.exception.expiry_timestamp",
            [self._exception_expiries],
            unit="s",
            description="When each break-glass exception of the served policy expires (Unix time), by"
            " policy, exception, owner (the policy's) and exception_owner",
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
        meter.create_observable_gauge(
            "egress_authz.policy.rejected",
            [self._policy_rejected],
            unit="1",
            description="1 while the policy files hold a change that was rejected (the last good"
            " version still serves), else 0",
        )
        meter.create_observable_counter(
            "egress_authz.callers.refused",
            [self._refused],
            unit="{call}",
            description="Check calls refused before any decision (mTLS): no_certificate, not_allowed",
        )
        self._shadow_instruments(meter)
        self._state_store_instruments(meter)
        meter.create_observable_counter(
            "egress_authz.spans.dropped",
            [self._dropped],
            unit="{span}",
            description="Spans and log records lost",
        )

    def _shadow_instruments(self, meter: Meter) -> None:
        """The shadow policy's (``authz serve --shadow-policy``): nothing observed without one."""
        meter.create_observable_counter(
            "egress_authz.shadow.checks",
            [self._shadow_checks],
            unit="{decision}",
            description="Checks also decided by the shadow policy, by result: agree, disagree, error",
        )
        meter.create_observable_counter(
            "egress_authz.shadow.disagreements",
            [self._shadow_disagreements],
            unit="{decision}",
            description="Checks the shadow policy decides otherwise, by verdict, shadow_verdict, shadow_reason,"
            " policy and owner",
        )
        meter.create_observable_gauge(
            "egress_authz.shadow.policy.info",
            [self._shadow_info],
            unit="1",
            description="1, labelled with the shadow policy version this process evaluates",
        )
        meter.create_observable_counter(
            "egress_authz.shadow.reloads",
            [self._shadow_reload_counts],
            unit="{reload}",
            description="Shadow policy reloads by result: applied, rejected (a bad change), unchanged, retried",
        )

    def _state_store_instruments(self, meter: Meter) -> None:
        """The state store's (``authz serve --state-store``): nothing observed without one."""
        self._store_errors: Mapping[str, int] = {}
        self._store_writes: Mapping[str, int] = {}
        self._store_up: Callable[[], bool] | None = None
        meter.create_observable_counter(
            "egress_authz.state_store.errors",
            [lambda _: [Observation(n, {"cause": c}) for c, n in list(self._store_errors.items())]],
            unit="{sighting}",
            description="First sightings the state store could not take, judged locally, by cause: timeout,"
            " connection, auth, response, error, unavailable (not retried yet), overflow",
        )
        meter.create_observable_counter(
            "egress_authz.state_store.writes",
            [lambda _: [Observation(n, {"result": r}) for r, n in list(self._store_writes.items())]],
            unit="{sighting}",
            description="First sightings the state store answered, by result: new (first in the fleet),"
            " known (the fleet had it), backlog (judged locally in an outage, written after)",
        )
        meter.create_observable_gauge(
            "egress_authz.state_store.up",
            [lambda _: [Observation(int(self._store_up()))] if self._store_up is not None else []],
            unit="1",
            description="1 while the state store answers, 0 while it is down",
        )

    def observe_state_store(
        self, errors: Mapping[str, int], writes: Mapping[str, int], up: Callable[[], bool]
    ) -> None:
        """The state store's counts by cause and result, and whether it answers, read at collection."""
        self._store_errors, self._store_writes, self._store_up = errors, writes, up

    def count(self, decision: Decision, seconds: float, first: bool) -> None:
        """On the check: one counter keyed by what the instruments need
        (the gauges are sums over it, taken at collection) and the duration."""
        self.counts[(decision.verdict, decision.reason, decision.policy, decision.owner, decision.mode,
                     decision.dry_run_reason, decision.identity is not None)] += 1  # fmt: skip
        self.durations.observe(seconds)
        if first:
            self.first_sighting(decision)
        if decision.exception is not None and decision.reason is Reason.ALLOWED_BY_EXCEPTION:
            self.exception_uses[(decision.policy or "", decision.exception)] += 1

    def first_sighting(self, decision: Decision) -> None:
        """A pair first seen (by this process, or with a state store by the fleet), by policy and owner."""
        self.first_seen[(decision.policy or "", decision.owner or "")] += 1

    def observe_policy(
        self,
        policy: Callable[[], CompiledPolicy | None],
        reloads: Callable[[], Mapping[str, int]],
        rejected: Callable[[], bool] = lambda: False,
    ) -> None:
        """Where the served policy (its version, its exceptions' expiry), the
        reload counts and whether the files hold a rejected change are read at collection."""
        self._policy, self._reloads, self._rejected = policy, reloads, rejected

    def observe_shadow_reloads(self, reloads: Callable[[], Mapping[str, int]]) -> None:
        """Where the shadow policy's reload counts are read at collection."""
        self._shadow_reloads = reloads

    def observe_refused_callers(self, refused: Mapping[str, int]) -> None:
        """The refusals of callers by cause, kept by the server's caller check."""
        self._refused_callers = refused

    def shutdown(self) -> None:
        self.provider.shutdown()
        if self._registered:
            REGISTRY.unregister(self.durations)

    def totals(self) -> tuple[int, int, int]:
        """Checks, checks with a verified identity, checks that matched no rule (dry-run included)."""
        checks = identified = unknown = 0
        for (_, reason, _, _, _, dry_run_reason, has_identity), count in list(self.counts.items()):
            checks += count
            if has_identity and reason not in _UNVERIFIED:
                identified += count
            if reason is _NO_MATCHING_RULE or dry_run_reason is _NO_MATCHING_RULE:
                unknown += count
        return checks, identified, unknown

    def _decisions(self, _options: CallbackOptions) -> list[Observation]:
        by_label: Counter[tuple[str, str, str, str, str]] = Counter()
        for (verdict, reason, policy, owner, mode, _, _), count in list(self.counts.items()):
            by_label[(verdict.value, reason.value, policy or "", owner or "", mode.value)] += count
        return [
            Observation(
                count, {"verdict": verdict, "reason": reason, "policy": policy, "owner": owner, "mode": mode}
            )
            for (verdict, reason, policy, owner, mode), count in by_label.items()
        ]

    def _first_seen(self, _options: CallbackOptions) -> list[Observation]:
        return [
            Observation(count, {"policy": policy, "owner": owner})
            for (policy, owner), count in list(self.first_seen.items())
        ]

    def _coverage(self, _options: CallbackOptions) -> list[Observation]:
        checks, identified, _ = self.totals()
        return [Observation(identified / checks)] if checks else []

    def _unknown_ratio(self, _options: CallbackOptions) -> list[Observation]:
        checks, _, unknown = self.totals()
        return [Observation(unknown / checks)] if checks else []

    def _exceptions(self, _options: CallbackOptions) -> list[Observation]:
        return [
            Observation(count, {"policy": policy, "exception": exception})
            for (policy, exception), count in list(self.exception_uses.items())
        ]

    def _exception_expiries(self, _options: CallbackOptions) -> list[Observation]:
        """One point an exception of the served policy, expired ones included
        (they deny EXCEPTION_EXPIRED until removed); listed once a version."""
        policy = self._policy()
        if policy is None:
            return []
        version, found = self._expiries
        if version != policy.version:
            found = [
                Observation(rule.expires, {"policy": service.name, "exception": rule.id,
                                           "owner": service.owner, "exception_owner": rule.owner or ""})
                for service in policy.services
                if service.exceptions is not None
                for rule in service.exceptions.rules()
                if rule.expires is not None
            ]  # fmt: skip
            self._expiries = (policy.version, found)
        return found

    def _policy_info(self, _options: CallbackOptions) -> list[Observation]:
        policy = self._policy()
        return [Observation(1, {"policy_version": policy.version})] if policy is not None else []

    def _policy_rejected(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(1 if self._rejected() else 0)] if self._policy() is not None else []

    def _reload_counts(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(count, {"result": result}) for result, count in dict(self._reloads()).items()]

    def _refused(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"cause": cause}) for cause, n in list(self._refused_callers.items())]

    def _shadow_checks(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"result": result}) for result, n in list(self.shadow.checks.items())]

    def _shadow_disagreements(self, _options: CallbackOptions) -> list[Observation]:
        return [
            Observation(
                n,
                {
                    "verdict": verdict.value,
                    "shadow_verdict": shadow.value,
                    "shadow_reason": reason.value,
                    "policy": policy,
                    "owner": owner,
                },
            )
            for (verdict, shadow, reason, policy, owner), n in list(self.shadow.disagreements.items())
        ]

    def _shadow_info(self, _options: CallbackOptions) -> list[Observation]:
        policy = self.shadow.policy
        return [Observation(1, {"policy_version": policy.version})] if policy is not None else []

    def _shadow_reload_counts(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(n, {"result": result}) for result, n in dict(self._shadow_reloads()).items()]

    def _dropped(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(count, {"cause": cause}) for cause, count in self._losses().items()]


def prometheus_reader(port: int, address: str = "127.0.0.1") -> MetricReader:
    """A Prometheus scrape endpoint on ``address``:``port``."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    start_http_server(port, addr=address)
    return PrometheusMetricReader()
