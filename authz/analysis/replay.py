"""What would this policy change deny? Each distinct logged request is
rebuilt and decided again by the engine the server runs, against the
proposed policy set, and compared with the log's own verdict (or with a
baseline set decided the same way): the blast radius of a change, measured on
the traffic that really flowed rather than guessed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from authz.analysis.logs import DecisionLogs
from authz.core.compiled import CompiledPolicy
from authz.core.decision import Decision, Reason
from authz.core.destination import format_destination
from authz.core.engine import evaluate
from authz.core.request import EgressRequest

__all__ = ["NOT_REPLAYED", "Change", "Flow", "Replay", "replay", "request_of"]

#: Reasons that were not the policy's answer but the server's (no policy
#: loaded yet, a timeout, an internal error): a policy change says nothing of them.
NOT_REPLAYED = frozenset({Reason.NO_POLICY.value, Reason.TIMEOUT.value, Reason.INTERNAL_ERROR.value})

_KEYS = ("identity", "http_host", "host", "port", "sni", "method", "path", "zone", "scheme")
_DISTINCT = f"""
SELECT {", ".join(_KEYS)}, verdict, reason, count(*) AS records, min(ts) AS first, max(ts) AS last
FROM decisions
WHERE reason IS NULL OR reason NOT IN ({", ".join(f"'{reason}'" for reason in sorted(NOT_REPLAYED))})
GROUP BY ALL
"""
_NOT_REPLAYED_COUNT = f"""
SELECT count(*) FROM decisions WHERE reason IN ({", ".join(f"'{reason}'" for reason in sorted(NOT_REPLAYED))})
"""


def request_of(row: dict[str, Any]) -> EgressRequest:
    """The request as the gateway saw it, from a decision record. A record
    from before ``http_host`` was kept has only the canonical ``host``: an
    HTTP request (it has a method) is rebuilt with that, a connection
    (no method) with its SNI alone, as the gateway sent it."""
    http_host = row.get("http_host")
    if http_host is None and row.get("method") is not None:
        http_host = row.get("host")
    return EgressRequest(
        row.get("identity"),
        http_host,
        row.get("port"),
        row.get("sni"),
        row.get("method"),
        row.get("path"),
        row.get("zone"),
        row.get("scheme"),
    )


@dataclass(frozen=True, slots=True)
class Change:
    """One distinct request whose verdict changed, as a sample."""

    request: EgressRequest
    records: int
    first: datetime
    last: datetime
    was: tuple[str, str]  # (verdict, reason) before
    now: Decision


@dataclass(slots=True)
class Flow:
    """The changed requests of one identity to one destination."""

    identity: str | None
    destination: str
    records: int = 0
    requests: int = 0
    first: datetime | None = None
    last: datetime | None = None
    transitions: Counter[str] = field(default_factory=Counter)  # "OLD_REASON -> NEW_REASON": records
    samples: list[Change] = field(default_factory=list)


@dataclass(slots=True)
class Replay:
    records: int = 0  # replayed (well-formed, in the window, decided by a policy)
    requests: int = 0  # distinct requests among them
    not_replayed: int = 0  # the server's own denials: NO_POLICY, TIMEOUT, INTERNAL_ERROR
    unchanged: int = 0
    reason_changed: int = 0  # same verdict, another reason (records)
    new_denies: dict[tuple[str | None, str], Flow] = field(default_factory=dict)
    new_allows: dict[tuple[str | None, str], Flow] = field(default_factory=dict)

    @property
    def denied(self) -> int:
        """Records allowed before and denied now."""
        return sum(flow.records for flow in self.new_denies.values())

    @property
    def allowed(self) -> int:
        """Records denied before and allowed now."""
        return sum(flow.records for flow in self.new_allows.values())

    def flows(self, denies: bool) -> list[Flow]:
        """Largest first."""
        chosen = self.new_denies if denies else self.new_allows
        return sorted(
            chosen.values(), key=lambda flow: (-flow.records, flow.identity or "", flow.destination)
        )


def replay(
    logs: DecisionLogs,
    policy: CompiledPolicy,
    *,
    baseline: CompiledPolicy | None = None,
    at: float | None = None,
    samples: int = 3,
) -> Replay:
    """Decide every distinct logged request under ``policy`` as of ``at``
    (seconds since the epoch; default the clock: the change's effect from
    now on), and compare with ``baseline`` decided the same way, or else
    with the verdict the log recorded."""
    result = Replay()
    (row,) = logs.query(_NOT_REPLAYED_COUNT)
    result.not_replayed = int(row[0])
    for group in _groups(logs.stream(_DISTINCT)):
        request = request_of(group)
        records = int(group["records"])
        now = evaluate(policy, request, at)
        if baseline is not None:
            before = evaluate(baseline, request, at)
            was = (before.verdict.value, before.reason.value)
        else:
            was = (group["verdict"], group["reason"])
        result.records += records
        result.requests += 1
        if was[0] == now.verdict.value:
            result.unchanged += records
            result.reason_changed += records if was[1] != now.reason.value else 0
            continue
        flows = result.new_denies if now.verdict.value == "deny" else result.new_allows
        destination = format_destination(now.host or "-", now.port)
        flow = flows.setdefault((request.identity, destination), Flow(request.identity, destination))
        flow.records += records
        flow.requests += 1
        flow.first = group["first"] if flow.first is None else min(flow.first, group["first"])
        flow.last = group["last"] if flow.last is None else max(flow.last, group["last"])
        flow.transitions[f"{was[1]} -> {now.reason.value}"] += records
        change = Change(request, records, group["first"], group["last"], was, now)
        flow.samples.append(change)
        if len(flow.samples) > samples:  # keep the most-seen requests
            flow.samples.sort(key=lambda sample: -sample.records)
            del flow.samples[samples:]
    return result


def _groups(rows: Iterable[tuple[Any, ...]]) -> Iterator[dict[str, Any]]:
    names = (*_KEYS, "verdict", "reason", "records", "first", "last")
    for row in rows:
        yield dict(zip(names, row, strict=True))
