"""Volume and protocol change: this period's flows against a baseline
(``authz inventory --compare-to LOG...`` or ``--baseline-window 7d``).

A flow is an (identity, destination) pair. Its requests (decisions), bytes
out and bytes in of the baseline are scaled to this period's length; a flow
*rose* when one of them now is at least ``factor`` times the scaled baseline
and at least its floor (``min_requests``, ``min_bytes``), so that a pair of
requests becoming six is not news. A pair seen in the baseline that now uses
a protocol it never used there (HTTP, TLS by SNI, CONNECT) is listed; a pair
not in the baseline at all is new (and listed as such, not as a rise).

``compare`` is pure (tested with hypothesis); ``volumes`` reads the
inventory's ``_flows`` table, so the logs are read once either way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from authz.analysis.logs import DecisionLogs
from authz.analysis.window import iso
from authz.core.destination import format_destination

__all__ = [
    "PROTOCOLS",
    "Comparison",
    "FlowChange",
    "Period",
    "Thresholds",
    "Volume",
    "compare",
    "protocol_sql",
    "volumes",
]

Protocol = Literal["HTTP", "TLS", "CONNECT"]
#: How a decision reached authz: an HTTP request (HTTP listener, or absolute-form through the proxy),
#: a TLS connection by SNI (the network filter: no method), or a CONNECT tunnel.
PROTOCOLS: tuple[Protocol, ...] = ("HTTP", "TLS", "CONNECT")
Key = tuple[str | None, str | None, int | None]  # identity, host, port
Metric = Literal["requests", "bytes_out", "bytes_in"]


def protocol_sql(method: str = "method") -> str:
    return f"CASE WHEN {method} = 'CONNECT' THEN 'CONNECT' WHEN {method} IS NULL THEN 'TLS' ELSE 'HTTP' END"


@dataclass(frozen=True, slots=True)
class Volume:
    """A flow's traffic in one period: decisions, bytes (None: no access log), protocols used."""

    requests: int
    bytes_out: int | None = None
    bytes_in: int | None = None
    protocols: frozenset[str] = frozenset()

    def get(self, metric: Metric) -> int | None:
        value: int | None = getattr(self, metric)
        return value


@dataclass(frozen=True, slots=True)
class Thresholds:
    factor: float = 3.0
    min_requests: int = 10
    min_bytes: int = 1 << 20


@dataclass(frozen=True, slots=True)
class Period:
    """[start, end] and the decisions in it; ``files`` None: the report's own logs."""

    start: datetime | None
    end: datetime | None
    records: int
    files: tuple[str, ...] | None = None

    @property
    def length(self) -> timedelta:
        if self.start is None or self.end is None:
            return timedelta(0)
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": iso(self.start),
            "end": iso(self.end),
            "seconds": self.length.total_seconds(),
            "records": self.records,
            "files": list(self.files) if self.files is not None else None,
        }


@dataclass(frozen=True, slots=True)
class FlowChange:
    """A pair's volumes now and in the baseline (unscaled); ``rose`` the metrics
    that rose past the factor, ``new_protocols`` those it never used before."""

    identity: str | None
    host: str | None
    port: int | None
    now: Volume
    before: Volume
    expected: Mapping[str, float]  # the baseline scaled to this period, by metric
    rose: tuple[Metric, ...] = ()
    new_protocols: tuple[str, ...] = ()

    @property
    def destination(self) -> str:
        return format_destination(self.host or "-", self.port)

    def ratio(self, metric: Metric) -> float:
        """Now over the scaled baseline (infinite from nothing)."""
        value = self.now.get(metric) or 0
        expected = self.expected.get(metric, 0.0)
        return value / expected if expected else math.inf

    def to_dict(self) -> dict[str, Any]:
        def side(volume: Volume) -> dict[str, Any]:
            return {"requests": volume.requests, "bytes_out": volume.bytes_out, "bytes_in": volume.bytes_in,
                    "protocols": sorted(volume.protocols)}  # fmt: skip

        ratios = {metric: self.ratio(metric) for metric in self.rose}
        return {
            "identity": self.identity,
            "destination": self.destination,
            "now": side(self.now),
            "baseline": side(self.before),
            "baseline_scaled": dict(self.expected),
            "rose": list(self.rose),
            "ratios": {metric: None if math.isinf(r) else round(r, 2) for metric, r in ratios.items()},
            "new_protocols": list(self.new_protocols),
        }


@dataclass(frozen=True, slots=True)
class Comparison:
    """This period against the baseline: ``scale`` (this period's length over
    the baseline's; None when either spans no time: nothing is compared), the
    flows that rose, the pairs over a new protocol, the pairs not in the baseline."""

    current: Period
    baseline: Period
    thresholds: Thresholds
    with_bytes: bool
    scale: float | None
    rises: tuple[FlowChange, ...]
    protocol_changes: tuple[FlowChange, ...]
    new_pairs: tuple[FlowChange, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "current": self.current.to_dict(),
            "baseline": self.baseline.to_dict(),
            "scale": self.scale,
            "factor": self.thresholds.factor,
            "min_requests": self.thresholds.min_requests,
            "min_bytes": self.thresholds.min_bytes if self.with_bytes else None,
            "rises": [change.to_dict() for change in self.rises],
            "protocol_changes": [change.to_dict() for change in self.protocol_changes],
            "new_pairs": [change.to_dict() for change in self.new_pairs],
        }


def compare(
    current: Period,
    now: Mapping[Key, Volume],
    baseline: Period,
    before: Mapping[Key, Volume],
    thresholds: Thresholds,
    *,
    with_bytes: bool,
) -> Comparison:
    """The flows of ``now`` against those of ``before``, the baseline scaled to ``current``'s length."""
    scale = (
        current.length / baseline.length
        if current.length > timedelta(0) and baseline.length > timedelta(0)
        else None
    )
    metrics: tuple[Metric, ...] = ("requests", "bytes_out", "bytes_in") if with_bytes else ("requests",)
    rises, protocols, new = [], [], []
    for key, volume in now.items():
        earlier = before.get(key)
        if earlier is None:
            new.append(FlowChange(*key, now=volume, before=Volume(0), expected={}))
            continue
        expected: dict[str, float] = {
            metric: (earlier.get(metric) or 0) * (scale or 0.0) for metric in metrics
        }
        rose = tuple(
            metric
            for metric in metrics
            if scale is not None and _rose(volume.get(metric) or 0, expected[metric], metric, thresholds)
        )
        fresh = tuple(p for p in PROTOCOLS if p in volume.protocols and p not in earlier.protocols)
        change = FlowChange(
            *key, now=volume, before=earlier, expected=expected, rose=rose, new_protocols=fresh
        )
        if rose:
            rises.append(change)
        if fresh:
            protocols.append(change)
    rises.sort(key=lambda c: (-max(c.ratio(m) for m in c.rose), -c.now.requests, *_order(c)))
    protocols.sort(key=_order)
    new.sort(key=lambda c: (-c.now.requests, -(c.now.bytes_out or 0), *_order(c)))
    return Comparison(
        current, baseline, thresholds, with_bytes, scale, tuple(rises), tuple(protocols), tuple(new)
    )


def _rose(value: int, expected: float, metric: Metric, thresholds: Thresholds) -> bool:
    floor = thresholds.min_requests if metric == "requests" else thresholds.min_bytes
    return value >= floor and value >= thresholds.factor * expected


def _order(change: FlowChange) -> tuple[str, str]:
    return (change.identity or "", change.destination)


def volumes(logs: DecisionLogs, where: str, *, with_bytes: bool) -> dict[Key, Volume]:
    """Each pair's volume in the ``_flows`` rows that ``where`` selects (the
    records, never the access log's orphan lines); bytes None without an access log."""
    rows = logs.query(
        f"SELECT identity, host, port, sum(n), sum(bytes_out), sum(bytes_in), "
        f"list(DISTINCT {protocol_sql()}) FROM _flows WHERE orphan IS NULL AND n > 0 AND ({where}) "
        "GROUP BY identity, host, port"
    )
    return {
        (identity, host, port): Volume(
            int(n), int(out) if with_bytes else None, int(into) if with_bytes else None, frozenset(protocols)
        )
        for identity, host, port, n, out, into, protocols in rows
    }
