"""Decision logs as a table: DuckDB reads the JSON lines (or Parquet) where
they lie, streaming, so a month of logs is aggregated in flat memory rather
than loaded into Python. Every analysis command queries the ``decisions`` view."""

from __future__ import annotations

import atexit
import gc
import glob
import gzip
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import duckdb

__all__ = [
    "COLUMNS",
    "MEMORY_LIMIT",
    "DecisionLogs",
    "LogError",
    "count_lines",
    "expand",
    "sql_instant",
    "sql_list",
]

#: DuckDB's memory cap (its default is 80% of the machine's memory). Measured (bench/inventory.py): the
#: inventory of a million records peaks near 240 MB of process memory under it; 128 MB is too little
#: for the JSON reader's own buffers.
MEMORY_LIMIT = "256MB"

#: The decision-log keys the analyses read, and their types (authz/telemetry/decision_log.py writes them).
#: A line whose value does not fit its type is malformed, skipped and counted.
COLUMNS: dict[str, str] = {
    "time": "VARCHAR",
    "decision_id": "VARCHAR",  # authz baseline; what Envoy's access log names (inventory --access-log)
    "verdict": "VARCHAR",
    "would_verdict": "VARCHAR",
    "reason": "VARCHAR",
    "dry_run_reason": "VARCHAR",
    "mode": "VARCHAR",
    "policy": "VARCHAR",
    "rule": "VARCHAR",
    "exception": "VARCHAR",
    "revocation": "VARCHAR",
    "identity": "VARCHAR",
    "host": "VARCHAR",
    "port": "VARCHAR",  # an integer, checked by _WELL_FORMED
    "http_host": "VARCHAR",
    "scheme": "VARCHAR",
    "sni": "VARCHAR",
    "method": "VARCHAR",
    "path": "VARCHAR",
    "zone": "VARCHAR",
    "policy_version": "VARCHAR",
    "first_seen": "VARCHAR",
    "shadow_verdict": "VARCHAR",
    "shadow_reason": "VARCHAR",
    "shadow_policy_version": "VARCHAR",
}
_PARQUET = (".parquet", ".pq")

# Compiling a policy freezes the heap (authz.policy.compile.gc_paused: a server's GC must not walk it);
# frozen objects escape the interpreter's last collection, and DuckDB's binding then reports its module's
# objects as leaked at exit, a screenful of noise after every command. Unfrozen before that collection.
atexit.register(gc.unfreeze)
_WHITESPACE = b" \t\r\f\v"
_BLANK_NEXT = re.compile(rb"\n(?=[ \t\r\f\v]*\n)")  # a newline the next line of which is blank
_WELL_FORMED = "ts IS NOT NULL AND verdict IN ('allow', 'deny') AND (port_text IS NULL OR port IS NOT NULL)"


class LogError(Exception):
    """The logs cannot be read at all (no such file, nothing matched): a
    malformed line is not one, it is skipped and counted."""


def expand(patterns: Sequence[str], what: str = "decision log") -> list[str]:
    """Files named or matched by glob (rotated ``PATH.1``, ``PATH.worker1``),
    each once, in order; a pattern that matches nothing is an error, since a
    report on fewer logs than asked for would mislead (``what`` names the logs in it)."""
    files: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matched = [name for name in matched if Path(name).is_file()]
        if not matched:
            raise LogError(f"{pattern}: no such {what}")
        files.extend(name for name in matched if name not in files)
    return files


class DecisionLogs:
    """The ``decisions`` view over the files: one row a well-formed record in
    [since, until), ``ts`` its time as a TIMESTAMP in UTC (naive: DuckDB
    hands a TIMESTAMPTZ to Python only through pytz). A line that is not a JSON
    object, has a key of the wrong type, or no parseable ``time`` or
    ``verdict``, is not a row; ``malformed`` counts them. The ``records``
    view holds every well-formed record, in the window or not (``in_window``)."""

    def __init__(
        self,
        patterns: Sequence[str],
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        memory_limit: str = MEMORY_LIMIT,
    ) -> None:
        self.files = tuple(expand(patterns))
        self.since, self.until = since, until
        # A cap, so that memory stays flat in the size of the logs (what the analyses keep is small);
        # an aggregation larger than it spills into a directory of our own, not the working directory.
        self._spill = tempfile.mkdtemp(prefix="authz-duckdb-")
        self.db = duckdb.connect(
            ":memory:", config={"threads": 2, "memory_limit": memory_limit, "temp_directory": self._spill}
        )
        self.db.execute("SET TimeZone = 'UTC'")
        self.db.execute(
            "SET enable_progress_bar = false"
        )  # drawn on the terminal, it would mix into a report
        self._jsonl = [name for name in self.files if not name.endswith(_PARQUET)]
        parquet = [name for name in self.files if name.endswith(_PARQUET)]
        keys = ", ".join(COLUMNS)
        sources = []
        if self._jsonl:
            types = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in COLUMNS.items()) + "}"
            sources.append(
                f"SELECT {keys} FROM read_json({sql_list(self._jsonl)}, format='newline_delimited', "
                f"columns={types}, ignore_errors=true, maximum_object_size=1048576)"
            )
        if parquet:
            source = f"read_parquet({sql_list(parquet)}, union_by_name=true)"
            present = {row[0] for row in self.db.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
            casts = ", ".join(
                f"TRY_CAST({name if name in present else 'NULL'} AS {kind}) AS {name}"
                for name, kind in COLUMNS.items()
            )
            sources.append(f"SELECT {casts} FROM {source}")
        self._parquet = parquet
        bounds = ["TRUE"]
        if since is not None:
            bounds.append(f"ts >= {sql_instant(since)}")
        if until is not None:
            bounds.append(f"ts < {sql_instant(until)}")
        self.db.execute(
            "CREATE TEMP VIEW _parsed AS SELECT * EXCLUDE (port, first_seen), port AS port_text, "
            "TRY_CAST(port AS INTEGER) AS port, TRY_CAST(first_seen AS BOOLEAN) AS first_seen, "
            f"TRY_CAST(time AS TIMESTAMPTZ)::TIMESTAMP AS ts FROM ({' UNION ALL '.join(sources)})"
        )
        self.db.execute(
            f"CREATE TEMP VIEW records AS SELECT *, ({' AND '.join(bounds)}) AS in_window "
            f"FROM _parsed WHERE {_WELL_FORMED}"
        )
        self.db.execute(
            "CREATE TEMP VIEW decisions AS SELECT * EXCLUDE (in_window) FROM records WHERE in_window"
        )
        self._malformed: int | None = None

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql``, which reads the ``decisions`` view (``?`` placeholders)."""
        return self.db.execute(sql, list(parameters)).fetchall()

    def stream(
        self, sql: str, parameters: Sequence[Any] = (), batch: int = 10_000
    ) -> Iterator[tuple[Any, ...]]:
        """Like query, a batch at a time: for results as long as the log."""
        cursor = self.db.execute(sql, list(parameters))
        while rows := cursor.fetchmany(batch):
            yield from rows

    @property
    def malformed(self) -> int:
        """Lines skipped (in any time window): not a JSON object, a key of the
        wrong type, no parseable time or verdict."""
        if self._malformed is None:
            (row,) = self.db.execute("SELECT count(*) FROM records").fetchall()
            self.count_malformed(int(row[0]))
        assert self._malformed is not None
        return self._malformed

    def count_lines(self) -> int:
        """Lines of the JSON-lines files that are not blank: file reading
        alone, so a caller may count them in a thread while DuckDB reads."""
        return count_lines(self._jsonl)

    def count_malformed(self, well_formed: int, lines: int | None = None) -> int:
        """``malformed``, given the number of rows of the ``records`` view (every
        well-formed record, ``in_window`` or not) that a caller has counted
        while reading it anyway, and the ``count_lines`` it may have counted
        meanwhile: the logs are then parsed once, not twice."""
        lines = self.count_lines() if lines is None else lines
        if self._parquet:
            (row,) = self.db.execute(
                f"SELECT count(*) FROM read_parquet({sql_list(self._parquet)})"
            ).fetchall()
            lines += int(row[0])
        self._malformed = lines - well_formed
        return self._malformed

    def close(self) -> None:
        self.db.close()
        shutil.rmtree(self._spill, ignore_errors=True)

    def __enter__(self) -> DecisionLogs:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def count_lines(names: Sequence[str]) -> int:
    """The lines of these JSON-lines files (gzipped or not) that are not blank."""
    return sum(_count_lines(name) for name in names)


def _count_lines(name: str, chunk_size: int = 1 << 22) -> int:
    """Lines that are not blank (whitespace only: neither records nor
    malformed), a few megabytes at a time: faster than DuckDB's own line
    reader (a gzipped rotation is read through)."""
    lines = blank = 0
    open_blank, open_line = True, False  # the line still open at a chunk's end: blank so far? begun?
    with _open(name) as file:
        while chunk := file.read(chunk_size):
            first = chunk.find(b"\n")
            if first < 0:
                open_blank, open_line = open_blank and not chunk.strip(_WHITESPACE), True
                continue
            lines += chunk.count(b"\n")
            blank += open_blank and not chunk[:first].strip(_WHITESPACE)  # the open line ends here
            blank += sum(1 for _ in _BLANK_NEXT.finditer(chunk, first))
            tail = chunk[chunk.rfind(b"\n") + 1 :]
            open_blank, open_line = not tail.strip(_WHITESPACE), bool(tail)
    if open_line:  # a last line without its newline
        lines += 1
        blank += open_blank
    return lines - blank


def _open(name: str) -> IO[bytes]:
    if name.endswith(".gz"):
        return cast(IO[bytes], gzip.open(name, "rb"))
    return open(name, "rb")


def sql_instant(moment: datetime) -> str:
    """A TIMESTAMP literal in UTC, as ``ts`` is (a naive datetime is UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return f"TIMESTAMP '{moment.isoformat()}'"


def sql_list(names: Sequence[str]) -> str:
    """A SQL list literal of file names (quotes doubled)."""
    return "[" + ", ".join("'" + name.replace("'", "''") + "'" for name in names) + "]"
