"""The two baselines of ``authz inventory``'s comparison: other logs
(``--compare-to LOG...``, all of them, aggregated as the inventory is) or the
span just before the report's window in its own logs (``--baseline-window
7d``, marked in the same pass that made the inventory). Either way each side
is a ``volumes`` query of a ``_flows`` table; ``compare`` does the rest."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from authz.analysis.access_log import AccessLogs
from authz.analysis.compare import Comparison, Period, Thresholds, compare, volumes
from authz.analysis.inventory import Inventory, aggregate_flows
from authz.analysis.logs import DecisionLogs

__all__ = ["against_logs", "against_window", "current_period"]


def current_period(inventory: Inventory) -> Period:
    """The report's window: from --since (or its first record) to --until (or its last record)."""
    start = inventory.since if inventory.since is not None else inventory.first
    end = inventory.until if inventory.until is not None else inventory.last
    return Period(_naive(start), _naive(end), inventory.records)


def against_window(
    logs: DecisionLogs, inventory: Inventory, window: tuple[datetime, datetime], thresholds: Thresholds
) -> Comparison:
    """Against the records in ``window`` of the same logs: take_inventory was
    given it as ``baseline``, so ``_flows`` marks them ``in_baseline``."""
    with_bytes = inventory.access is not None
    ((records,),) = logs.query("SELECT coalesce(sum(n), 0) FROM _flows WHERE in_baseline AND orphan IS NULL")
    baseline = Period(_naive(window[0]), _naive(window[1]), int(records))
    return compare(
        current_period(inventory),
        volumes(logs, "in_window", with_bytes=with_bytes),
        baseline,
        volumes(logs, "in_baseline", with_bytes=with_bytes),
        thresholds,
        with_bytes=with_bytes,
    )


def against_logs(
    logs: DecisionLogs,
    inventory: Inventory,
    patterns: Sequence[str],
    access_patterns: Sequence[str],
    thresholds: Thresholds,
) -> Comparison:
    """Against every record of the logs ``patterns`` names (the baseline spans
    their first to their last record), with the bytes of the same access logs."""
    with_bytes = inventory.access is not None
    now = volumes(logs, "in_window", with_bytes=with_bytes)
    with DecisionLogs(patterns) as base:
        access = AccessLogs(access_patterns, base) if access_patterns else None
        aggregate_flows(base, access)
        before = volumes(base, "TRUE", with_bytes=with_bytes)
        ((first, last, records),) = base.query(
            "SELECT min(first_seen), max(last_seen), coalesce(sum(n), 0) FROM _flows WHERE orphan IS NULL"
        )
        baseline = Period(first, last, int(records), base.files)
    return compare(current_period(inventory), now, baseline, before, thresholds, with_bytes=with_bytes)


def _naive(moment: datetime | None) -> datetime | None:
    """In UTC without its offset, as DuckDB's timestamps are."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
