import json
import time
from pathlib import Path
from typing import Any

import pytest

from authz.telemetry import DecisionLog
from tests.telemetry.helpers import CI, PARENT_ID, TRACE_ID, Recorded, decide


def test_decision_log_records_are_complete_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    recorded = Recorded({"OTEL_TRACES_SAMPLER": "always_on"}, decision_log=str(path))
    decision, request = decide(CI, "PasteBin.com", method="GET", path="/raw", zone="eu", scheme="https")
    recorded.record(decision, request, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    recorded.telemetry.shutdown()
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert set(record) == {
        "time", "decision_id", "allowed", "verdict", "would_verdict", "reason", "dry_run_reason", "mode", "policy",
        "rule", "owner", "change_ref", "identity", "host", "port", "destination", "sni", "method", "path", "zone",
        "policy_version", "service_version", "detail", "duration_ms", "trace_id", "span_id", "sampled", "first_seen",
        "first_seen_source", "exception", "exception_owner", "ticket", "revocation", "http_host", "scheme",
        "shadow_verdict", "shadow_reason", "shadow_policy_version",
    }  # fmt: skip
    assert (record["shadow_verdict"], record["shadow_reason"], record["shadow_policy_version"]) == (None,) * 3
    assert (record["verdict"], record["reason"], record["identity"], record["destination"]) == (
        "deny", "NO_MATCHING_RULE", CI, "pastebin.com:443",
    )  # fmt: skip
    assert (record["host"], record["http_host"], record["scheme"]) == (
        "pastebin.com",
        "PasteBin.com",
        "https",
    )
    assert record["trace_id"] == TRACE_ID
    assert (record["first_seen"], record["first_seen_source"]) == (True, "local")  # no state store
    assert record["time"].endswith("Z")


def test_decision_log_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(str(path), max_bytes=2000, backups=2)
    for index in range(200):
        log.write({"n": index, "pad": "x" * 50})
        if index % 20 == 0:
            time.sleep(0.01)  # let the writer drain and rotate
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["decisions.jsonl", "decisions.jsonl.1", "decisions.jsonl.2"]
    assert all(p.stat().st_size <= 2000 + 200 for p in tmp_path.iterdir())
    last = [json.loads(line)["n"] for line in path.read_text().splitlines()]
    assert last[-1] == 199


def _written_until(log: DecisionLog, path: Path, seconds: float = 10.0) -> int:
    """Writes records until one lands in ``path``; how many were written (bounded in time)."""
    deadline = time.monotonic() + seconds
    written = 0
    while time.monotonic() < deadline:
        log.write({"n": written})
        written += 1
        if path.exists() and path.stat().st_size > 0:
            return written
        time.sleep(0.01)
    raise AssertionError(f"nothing reached {path} in {seconds} s")


def test_a_log_that_cannot_be_opened_counts_its_records_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "logs"
    directory.write_text("a file where the log's directory should be")  # ENOTDIR, even for root
    path = directory / "decisions.jsonl"
    log = DecisionLog(str(path), retry_seconds=0.05)
    for index in range(100):
        log.write({"n": index})
    deadline = time.monotonic() + 10
    while log.failed < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (log.failed, log.dropped) == (100, 0)
    assert "cannot be written" in caplog.text
    directory.unlink()
    directory.mkdir()
    _written_until(log, path)  # reopened once it can be
    log.close()
    assert "is written again" in caplog.text


def test_a_failed_write_is_counted_and_the_writer_carries_on(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full (a device whose every write fails with ENOSPC) on this system")
    log = DecisionLog("/dev/full", retry_seconds=0.01)
    for index in range(50):
        log.write({"n": index})
    deadline = time.monotonic() + 10
    while log.failed < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    log.close()
    assert (log.failed, log.dropped) == (50, 0)


def _write_settled(log: DecisionLog, record: dict[str, Any], files: tuple[Path, ...], written: int) -> None:
    """Writes ``record`` (the ``written``-th) and waits until the writer has put it in a file or
    counted it: with records queued behind, a second rotation could overwrite the only backup and lose
    records the test has not read yet (backups=1 keeps one)."""
    log.write(record)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = sum(len(f.read_text().splitlines()) for f in files if f.is_file())
        if lines + log.failed >= written:
            return
        time.sleep(0.002)
    raise AssertionError(f"record {written} neither written nor counted in 10 s")


def test_a_failed_rotation_keeps_what_was_written_and_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    blocker = tmp_path / "decisions.jsonl.1"
    blocker.mkdir()
    (blocker / "x").touch()  # the rotation's rename onto a non-empty directory fails, even for root
    log = DecisionLog(str(path), max_bytes=200, backups=1, retry_seconds=0.02)
    files = (blocker, path)
    written = 0
    while log.failed == 0 and written < 1_000:  # the file passes 200 bytes, and its rotation fails
        written += 1
        _write_settled(log, {"n": written, "pad": "x" * 50}, files, written)
    assert log.failed > 0
    failed = log.failed
    (blocker / "x").unlink()
    blocker.rmdir()
    while not blocker.is_file() and written < 2_000:  # retried, and rotated at last
        written += 1
        _write_settled(log, {"n": written, "pad": "x" * 50}, files, written)
    log.close()
    assert blocker.is_file()
    kept = [json.loads(line)["n"] for name in files for line in name.read_text().splitlines()]
    assert len(kept) + log.failed == written  # every record is in a file or counted
    assert log.failed >= failed
    assert sorted(kept) == kept  # nothing written twice or out of order
