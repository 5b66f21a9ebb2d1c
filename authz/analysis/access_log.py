"""Envoy's access log beside the decision logs: the bytes each decision let
through, joined by decision id.

`authz envoy-config` renders on every listener a JSON line a request (HTTP),
connection (TLS by SNI) or tunnel (CONNECT), written as it ends, with the
decision id from ext_authz's dynamic metadata and Envoy's wire counters:
``upstream_bytes_sent`` (what went to the destination: bytes out) and
``upstream_bytes_received`` (what came back: bytes in), 0 where nothing went
(a deny). DuckDB reads the lines where they lie, as it reads the decision
logs, and the inventory and the scorecard read them in the same pass as the
decisions (``records_with_bytes``).

A line is well-formed when it is a JSON object whose two counters are
numbers, not negative; any other line is skipped and counted as malformed. A
well-formed line with no decision id (no check was made: a TLS handshake
refused, the RBAC floor's deny, authz unreachable) or one that no decision of
the logs has is counted, with its bytes, never dropped unsaid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from authz.analysis.logs import DecisionLogs, count_lines, expand, sql_list

__all__ = ["ACCESS_COLUMNS", "AccessLogSummary", "AccessLogs", "byte_sums", "records_with_bytes", "summarize"]

#: The keys of Envoy's access-log line that the join reads, and their types.
ACCESS_COLUMNS: dict[str, str] = {
    "decision_id": "VARCHAR",
    "upstream_bytes_sent": "DOUBLE",  # Envoy writes some counters as 5000000.0
    "upstream_bytes_received": "DOUBLE",
}
#: The join's columns for each record when no access log is given.
_NO_BYTES = "0::BIGINT AS lines, 0::BIGINT AS bytes_out, 0::BIGINT AS bytes_in, NULL::VARCHAR AS orphan"
_BYTE_SUMS = (
    "coalesce(sum(lines), 0) AS lines, count(ts) FILTER (WHERE lines > 0) AS logged, "
    "count(ts) FILTER (WHERE lines > 1) AS repeated, coalesce(sum(bytes_out), 0) AS bytes_out, "
    "coalesce(sum(bytes_in), 0) AS bytes_in"
)


class AccessLogs:
    """The ``access`` view, in the decision logs' own DuckDB connection: one
    row a well-formed line, with its decision id (None: no check) and bytes."""

    def __init__(self, patterns: Sequence[str], logs: DecisionLogs) -> None:
        self.files = tuple(expand(patterns, "access log"))
        types = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in ACCESS_COLUMNS.items()) + "}"
        # A count that is no whole number of bytes a BIGINT holds (1e30) is malformed, not an error.
        logs.db.execute(
            "CREATE OR REPLACE TEMP VIEW access AS SELECT * FROM (SELECT decision_id, "
            "TRY_CAST(round(upstream_bytes_sent) AS BIGINT) AS bytes_out, "
            "TRY_CAST(round(upstream_bytes_received) AS BIGINT) AS bytes_in "
            f"FROM read_json({sql_list(self.files)}, format='newline_delimited', columns={types}, "
            "ignore_errors=true, maximum_object_size=1048576)) WHERE bytes_out >= 0 AND bytes_in >= 0"
        )

    def count_lines(self) -> int:
        """The lines that are not blank (well-formed or not): file reading alone, for a thread."""
        return count_lines(self.files)


def records_with_bytes(access: AccessLogs | None) -> str:
    """SQL of the ``records`` view, each record with the access-log ``lines``
    of its decision id and their ``bytes_out`` and ``bytes_in`` (0 without
    any), and a row for each decision id of the access log that no record
    has (``orphan``: ``unmatched``; ``no_decision_id`` for the lines without
    one, as one row): its record columns NULL, ``in_window`` too, so that a
    query of the records in the window never sees it. The access log is
    grouped by decision id first: a decision logged on two lines (a log
    read twice) is still one record."""
    if access is None:
        return f"SELECT *, {_NO_BYTES} FROM records"
    return (
        "SELECT records.*, coalesce(a.lines, 0) AS lines, coalesce(a.bytes_out, 0) AS bytes_out, "
        "coalesce(a.bytes_in, 0) AS bytes_in, CASE WHEN records.ts IS NOT NULL THEN NULL "
        "WHEN a.decision_id IS NULL THEN 'no_decision_id' ELSE 'unmatched' END AS orphan "
        "FROM records FULL OUTER JOIN (SELECT decision_id, count(*) AS lines, sum(bytes_out) AS bytes_out, "
        "sum(bytes_in) AS bytes_in FROM access GROUP BY decision_id) a ON records.decision_id = a.decision_id"
    )


def byte_sums(access: AccessLogs | None) -> str:
    """The aggregates a grouping of ``records_with_bytes`` (``_flows``, the scorecard's facts)
    keeps: ``lines``, ``logged`` (records with a line), ``repeated`` (with more than one),
    ``bytes_out``, ``bytes_in``. Constants without an access log: five aggregates more would
    cost the grouping of millions of records memory for nothing (3,000,000 records then
    overran DuckDB's cap)."""
    if access is None:
        return ", ".join(
            f"0::BIGINT AS {name}" for name in ("lines", "logged", "repeated", "bytes_out", "bytes_in")
        )
    return _BYTE_SUMS


@dataclass(frozen=True, slots=True)
class AccessLogSummary:
    """How the access log met the decisions. ``lines`` well-formed lines (of
    every window), of which ``matched`` name a decision of the logs,
    ``unmatched`` a decision id that no record has, ``no_decision_id`` none
    (no check was made); the bytes of the last two; ``malformed`` lines
    skipped. In the window: ``decisions`` records, ``logged`` of them with a
    line, ``repeated`` with more than one (their bytes are summed)."""

    files: tuple[str, ...]
    lines: int
    malformed: int
    matched: int
    unmatched: int
    unmatched_bytes_out: int
    unmatched_bytes_in: int
    no_decision_id: int
    no_decision_id_bytes_out: int
    no_decision_id_bytes_in: int
    decisions: int
    logged: int
    repeated: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": list(self.files),
            "lines": self.lines,
            "malformed": self.malformed,
            "matched": self.matched,
            "unmatched": {
                "lines": self.unmatched,
                "bytes_out": self.unmatched_bytes_out,
                "bytes_in": self.unmatched_bytes_in,
            },
            "no_decision_id": {
                "lines": self.no_decision_id,
                "bytes_out": self.no_decision_id_bytes_out,
                "bytes_in": self.no_decision_id_bytes_in,
            },
            "decisions": self.decisions,
            "decisions_logged": self.logged,
            "decisions_repeated": self.repeated,
        }


def summarize(logs: DecisionLogs, access: AccessLogs, table: str, lines: int) -> AccessLogSummary:
    """The summary from ``table``, a grouping of ``records_with_bytes`` with
    the ``orphan`` group and the ``byte_sums`` (and ``in_window`` and ``n``);
    ``lines`` is ``access.count_lines()``, counted meanwhile."""
    rows = logs.query(
        f"SELECT orphan, sum(lines), sum(bytes_out), sum(bytes_in), coalesce(sum(n) FILTER (WHERE in_window), 0), "
        f"coalesce(sum(logged) FILTER (WHERE in_window), 0), coalesce(sum(repeated) FILTER (WHERE in_window), 0) "
        f"FROM {table} GROUP BY orphan"
    )
    found: dict[str | None, tuple[int, ...]] = {
        orphan: tuple(int(v or 0) for v in rest) for orphan, *rest in rows
    }
    matched = found.get(None, (0,) * 6)
    unmatched = found.get("unmatched", (0,) * 6)
    missing = found.get("no_decision_id", (0,) * 6)
    well_formed = matched[0] + unmatched[0] + missing[0]
    return AccessLogSummary(
        files=access.files,
        lines=well_formed,
        malformed=lines - well_formed,
        matched=matched[0],
        unmatched=unmatched[0],
        unmatched_bytes_out=unmatched[1],
        unmatched_bytes_in=unmatched[2],
        no_decision_id=missing[0],
        no_decision_id_bytes_out=missing[1],
        no_decision_id_bytes_in=missing[2],
        decisions=matched[3],
        logged=matched[4],
        repeated=matched[5],
    )
