import json
import time
from pathlib import Path

from authz.telemetry import DecisionLog
from tests.telemetry.helpers import CI, PARENT_ID, TRACE_ID, Recorded, decide


def test_decision_log_records_are_complete_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    recorded = Recorded({"OTEL_TRACES_SAMPLER": "always_on"}, decision_log=str(path))
    decision, request = decide(CI, "pastebin.com", method="GET", path="/raw", zone="eu")
    recorded.record(decision, request, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    recorded.telemetry.shutdown()
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert set(record) == {
        "time", "decision_id", "allowed", "verdict", "would_verdict", "reason", "dry_run_reason", "mode", "policy",
        "rule", "owner", "change_ref", "identity", "host", "port", "destination", "sni", "method", "path", "zone",
        "policy_version", "service_version", "detail", "duration_ms", "trace_id", "span_id", "sampled", "first_seen",
        "exception", "exception_owner", "ticket", "revocation",
    }  # fmt: skip
    assert (record["verdict"], record["reason"], record["identity"], record["destination"]) == (
        "deny", "NO_MATCHING_RULE", CI, "pastebin.com:443",
    )  # fmt: skip
    assert record["trace_id"] == TRACE_ID
    assert record["first_seen"] is True
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
