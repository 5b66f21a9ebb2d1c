"""What would this policy change deny? Each distinct logged request is
rebuilt and decided again by the engine the server runs, against the
proposed policy set, and compared with the log's own verdict (or with a
baseline set decided the same way): the blast radius of a change, measured on
the traffic that really flowed rather than guessed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
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
# Every well-formed record, grouped: the logs are parsed once for the replay and the malformed count.
_DISTINCT = f"""
SELECT {", ".join(_KEYS)}, verdict, reason, in_window, count(*) AS records, min(ts) AS first, max(ts) AS last
FROM records GROUP BY ALL
"""


def request_of(row: Mapping[str, Any]) -> EgressRequest:
    """The request as the gateway saw it, from a decision record."""
    return _rebuild(*(row.get(key) for key in _KEYS))


def _rebuild(
    identity: str | None,
    http_host: str | None,
    host: str | None,
    port: int | None,
    sni: str | None,
    method: str | None,
    path: str | None,
    zone: str | None,
    scheme: str | None,
) -> EgressRequest:
    """A record from before ``http_host`` was kept has only the canonical
    ``host``: an HTTP request (it has a method) is rebuilt with that, a
    connection (no method) with its SNI alone, as the gateway sent it."""
    if http_host is None and method is not None:
        http_host = host
    return EgressRequest(identity, http_host, port, sni, method, path, zone, scheme)


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
    transitions: Counter[tuple[str, str]] = field(
        default_factory=Counter
    )  # (old reason, new reason): records
    samples: list[Change] = field(default_factory=list)


@dataclass(slots=True)
class Replay:
    records: int = 0  # replayed (well-formed, in the window, decided by a policy)
    requests: int = 0  # distinct requests among them
    not_replayed: int = 0  # the server's own denials: NO_POLICY, TIMEOUT, INTERNAL_ERROR
    malformed: int = 0  # lines of the logs skipped (in any window)
    unchanged: int = 0
    reason_changed: int = 0  # same verdict, another reason (records)
    new_denies: dict[tuple[str | None, str | None, int | None], Flow] = field(default_factory=dict)
    new_allows: dict[tuple[str | None, str | None, int | None], Flow] = field(default_factory=dict)

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
    fields = len(_KEYS)
    well_formed = 0
    for row in logs.stream(_DISTINCT):
        logged_verdict, logged_reason, in_window, records, first, last = row[fields:]
        well_formed += records
        if not in_window:
            continue
        if logged_reason in NOT_REPLAYED:
            result.not_replayed += records
            continue
        request = _rebuild(*row[:fields])
        now = evaluate(policy, request, at)
        if baseline is not None:
            before = evaluate(baseline, request, at)
            was = (before.verdict.value, before.reason.value)
        else:
            was = (logged_verdict, logged_reason)
        result.records += records
        result.requests += 1
        verdict = now.verdict.value
        if was[0] == verdict:
            result.unchanged += records
            if was[1] != now.reason.value:
                result.reason_changed += records
            continue
        flows = result.new_denies if verdict == "deny" else result.new_allows
        key = (request.identity, now.host, now.port)
        flow = flows.get(key)
        if flow is None:
            flow = flows[key] = Flow(
                request.identity, format_destination(now.host or "-", now.port), first=first
            )
        flow.records += records
        flow.requests += 1
        flow.first = min(flow.first or first, first)
        flow.last = max(flow.last or last, last)
        flow.transitions[(was[1], now.reason.value)] += records
        kept = flow.samples
        if len(kept) < samples or records > kept[-1].records:  # the most-seen requests, most first
            kept.append(Change(request, records, first, last, was, now))
            kept.sort(key=_most_seen)
            del kept[samples:]
    result.malformed = logs.count_malformed(well_formed)
    return result


def _most_seen(change: Change) -> int:
    return -change.records
