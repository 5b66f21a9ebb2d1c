"""The decision-log reader: globs and rotations, Parquet, the time window,
and malformed lines skipped and counted, never fatal."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from authz.analysis.logs import DecisionLogs, LogError, expand

CI = "spiffe://prod.example.org/ns/ci/sa/runner"


def record(time: str = "2026-11-02T10:00:00.000Z", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "time": time, "verdict": "allow", "reason": "ALLOWED_BY_RULE", "identity": CI,
        "host": "github.com", "port": 443, "method": "GET", "path": "/", "scheme": "https",
    }  # fmt: skip
    return base | fields


def write(path: Path, *lines: dict[str, Any] | str) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_rotated_files_by_glob_each_once_and_a_pattern_matching_nothing_is_an_error(tmp_path: Path) -> None:
    for name in ("d.jsonl", "d.jsonl.1", "d.jsonl.worker1", "other.txt"):
        write(tmp_path / name, record())
    files = expand([str(tmp_path / "d.jsonl*"), str(tmp_path / "d.jsonl")])
    assert [Path(name).name for name in files] == ["d.jsonl", "d.jsonl.1", "d.jsonl.worker1"]
    with pytest.raises(LogError, match="no such decision log"):
        expand([str(tmp_path / "missing-*.jsonl")])
    with pytest.raises(LogError, match="no such decision log"):
        expand([str(tmp_path / "missing.jsonl")])


def test_malformed_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl",
        record(),
        "not json at all",
        "[1, 2]",
        json.dumps(record(port="https")),  # a key of the wrong type
        json.dumps(record(time="yesterday")),
        json.dumps(record(verdict="maybe")),
        '{"time": "2026-11-02T10:00:00Z", "verdict": "allow", "host": "cut off',
        "",
        "   ",
        record(host="api.openai.com"),
    )
    with path.open("a") as file:
        file.write(json.dumps(record(host="last.example")))  # no final newline: still a record
    with DecisionLogs([str(path)]) as logs:
        hosts = [row[0] for row in logs.query("SELECT host FROM decisions ORDER BY host")]
        assert hosts == ["api.openai.com", "github.com", "last.example"]
        assert logs.malformed == 6


def test_the_time_window_is_half_open_and_times_are_utc(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.jsonl",
        record("2026-11-01T23:59:59.999Z", host="a.example"),
        record("2026-11-02T00:00:00.000Z", host="b.example"),
        record("2026-11-02T01:30:00+01:30", host="c.example"),  # 00:00 UTC, an offset of its own
        record("2026-11-03T00:00:00.000Z", host="d.example"),
    )
    since = datetime(2026, 11, 2, tzinfo=UTC)
    with DecisionLogs([str(path)], since=since, until=datetime(2026, 11, 3)) as logs:
        rows = logs.query("SELECT host, ts FROM decisions ORDER BY host")
    assert rows == [("b.example", datetime(2026, 11, 2)), ("c.example", datetime(2026, 11, 2))]


def test_gzipped_rotations_and_parquet_with_missing_keys(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "d.jsonl.2.gz", "wt") as file:
        file.write(json.dumps(record(host="gz.example")) + "\nbroken\n")
    source = write(
        tmp_path / "old.jsonl", {k: v for k, v in record(host="pq.example").items() if k != "scheme"}
    )
    parquet = tmp_path / "shipped.parquet"
    duckdb.sql(f"COPY (SELECT * FROM read_json('{source}')) TO '{parquet}' (FORMAT parquet)")
    with DecisionLogs([str(tmp_path / "*.gz"), str(parquet)]) as logs:
        rows = logs.query("SELECT host, port, scheme FROM decisions ORDER BY host")
        assert rows == [("gz.example", 443, "https"), ("pq.example", 443, None)]
        assert logs.malformed == 1


def test_stream_yields_every_row_in_batches(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", *(record(path=f"/{index}") for index in range(25)))
    with DecisionLogs([str(path)]) as logs:
        paths = [row[0] for row in logs.stream("SELECT path FROM decisions", batch=7)]
    assert sorted(paths, key=lambda text: int(text[1:])) == [f"/{index}" for index in range(25)]
