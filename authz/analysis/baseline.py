"""``authz baseline``: every (zone, identity, destination) pair the decision
logs saw, written to the state store as already known, so that a rollout of
``authz serve --state-store`` onto existing traffic alarms only on what is
really new.

The logs are read as ``authz inventory`` reads them (``logs``: DuckDB,
streaming, one grouped pass, flat memory): a pair is a group, with its first
record (time, decision id, verdict: what the store keeps) and its last. A
pair is written with the TTL that is left of it since it was last seen
(``--first-seen-ttl`` less its age), so a pair last used long ago is not kept
longer than the server would keep it; one older than the TTL is left out
(it would be new again). A pair the store has is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from authz.analysis.logs import DecisionLogs
from authz.analysis.window import iso
from authz.core.destination import format_destination
from authz.telemetry.state_store import Sighting, StateStore

__all__ = ["Baseline", "BaselinePair", "pairs", "write_baseline"]

BATCH = 1_000  # pairs a round trip


@dataclass(frozen=True, slots=True)
class BaselinePair:
    """A pair the logs saw, and what the store is told of its first sighting."""

    sighting: Sighting
    last_seen: datetime  # naive UTC, as DuckDB's ts


@dataclass(frozen=True, slots=True)
class Baseline:
    """What ``write_baseline`` did (or, with ``dry_run``, would do)."""

    files: tuple[str, ...]
    records: int  # in the window
    malformed: int  # lines skipped, in any window
    pairs: int  # in the window
    written: int  # new to the store (with dry_run: would be)
    known: int  # the store had them already: left as they are
    expired: int  # last seen longer ago than the TTL: left out
    dry_run: bool


_AGGREGATE = """
CREATE OR REPLACE TEMP TABLE _pairs AS
SELECT zone, identity, host, port, in_window, count(*) AS n,
       min(ts) AS first_ts, max(ts) AS last_ts,
       arg_min(decision_id, ts) AS decision_id, arg_min(verdict, ts) AS verdict
FROM records GROUP BY ALL
"""


def pairs(logs: DecisionLogs) -> tuple[int, int, Iterator[BaselinePair]]:
    """The records in the window, the malformed lines, and the window's pairs
    (records with an identity and a host), read in one pass over the logs."""
    with ThreadPoolExecutor(1) as pool:  # the lines counted while DuckDB reads, as inventory does
        lines = pool.submit(logs.count_lines)
        logs.db.execute(_AGGREGATE)
    (total, records) = logs.db.execute(
        "SELECT coalesce(sum(n), 0), coalesce(sum(n) FILTER (WHERE in_window), 0) FROM _pairs"
    ).fetchone() or (0, 0)
    malformed = logs.count_malformed(int(total), lines.result())
    query = (
        "SELECT zone, identity, host, port, min(first_ts), max(last_ts), arg_min(decision_id, first_ts),"
        " arg_min(verdict, first_ts) FROM _pairs WHERE in_window AND identity IS NOT NULL AND host IS NOT NULL"
        " GROUP BY zone, identity, host, port ORDER BY identity, host, port, zone"
    )

    def read() -> Iterator[BaselinePair]:
        for zone, identity, host, port, first, last, decision_id, verdict in logs.stream(query):
            sighting = Sighting(
                zone=zone,
                identity=identity,
                destination=format_destination(host, port),
                time=iso(first) or "",
                decision_id=decision_id,
                verdict=verdict,
                by="authz baseline",
            )
            yield BaselinePair(sighting, last)

    return int(records), malformed, read()


async def write_baseline(
    logs: DecisionLogs,
    store: StateStore,
    ttl: float,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> Baseline:
    """Write the logs' pairs to ``store`` as known (SET NX, a batch a round
    trip); with ``dry_run``, only ask which it has (EXISTS). Raises what the
    store raises (``state_store.cause_of`` names it)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
    records, malformed, found = pairs(logs)
    counts = {"pairs": 0, "written": 0, "known": 0, "expired": 0}
    batch: list[tuple[Sighting, float]] = []

    async def flush() -> None:
        if not batch:
            return
        if dry_run:
            answers = await store.known([sighting.key for sighting, _ in batch])
            answers = [not known for known in answers]
        else:
            answers = await store.claim_each(batch)
        counts["written"] += sum(answers)
        counts["known"] += len(answers) - sum(answers)
        batch.clear()

    try:
        for pair in found:
            counts["pairs"] += 1
            left = ttl - (moment - pair.last_seen).total_seconds()
            if left < 1:
                counts["expired"] += 1
                continue
            batch.append((pair.sighting, left))
            if len(batch) >= BATCH:
                await flush()
        await flush()
    finally:
        await store.aclose()
    return Baseline(logs.files, records, malformed, dry_run=dry_run, **counts)


def summary(result: Baseline, ttl_text: str, store: str) -> Sequence[str]:
    """The lines ``authz baseline`` prints."""
    from authz.analysis.inventory_report import counted

    skipped = f" ({counted(result.malformed, 'malformed line')} skipped)" if result.malformed else ""
    lines = [
        f"{counted(result.pairs, 'identity-destination pair')} in {counted(result.records, 'decision')}"
        f" from {counted(len(result.files), 'file')}{skipped}"
    ]
    verb = "would be written" if result.dry_run else "written"
    lines.append(f"{result.written:,} {verb} to {store} as known, {result.known:,} already known")
    if result.expired:
        lines.append(f"{result.expired:,} last seen longer ago than --first-seen-ttl {ttl_text}: left out")
    return lines
