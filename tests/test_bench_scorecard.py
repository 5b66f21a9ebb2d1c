"""bench/scorecard.py's simulated month (the README's example and the
benchmark's log): real records the scorecard reads in full, revocations that
take effect only after their ``at``, and the replayed policy history."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from authz.analysis.access_log import AccessLogs
from authz.analysis.inventory import take_inventory
from authz.analysis.logs import DecisionLogs
from authz.policy import load_paths
from authz.policy.history import exception_lives, revisions
from tests.paths import ROOT, bench_module


def test_the_simulated_log_is_real_records_and_revocations_apply_40_s_after_their_at(tmp_path: Path) -> None:
    bench = bench_module("scorecard")
    log = tmp_path / "d.jsonl"
    bench.write_log(log, 3000)
    at = {
        str(e.identity): e.at
        for loaded in load_paths([ROOT / "policies"]).revocations
        for e in loaded.model.spec.revoked
    }
    with DecisionLogs([str(log)]) as logs:
        assert logs.malformed == 0
        (checks,) = logs.query("SELECT count(*) FROM decisions")[0]
        assert checks == 3000
        revoked = logs.query(
            "SELECT revocation, min(ts) FROM decisions WHERE reason = 'REVOKED' GROUP BY ALL"
        )
    assert revoked  # the month holds REVOKED decisions, each no earlier than its revocation took effect
    for pattern, first in revoked:
        assert first >= (at[pattern] + timedelta(seconds=40)).replace(tzinfo=None)


def test_the_replayed_policy_history_removes_three_exceptions(tmp_path: Path) -> None:
    policies = bench_module("scorecard").policy_history(tmp_path / "repo")
    lives = exception_lives(revisions([policies]))
    assert sorted(life.exception for life in lives if life.removed is not None) == [
        "bank-dr",
        "dns-hotfix",
        "new-vendor",
    ]
    assert [life.exception for life in lives if life.removed is None] == [
        "backup-fraud-scoring",
        "bank-cutover",
    ]
    assert (policies / "payments-api.yaml").read_text() == (
        ROOT / "policies" / "payments-api.yaml"
    ).read_text()


def test_the_simulated_access_log_joins_every_check_and_moves_bytes_only_when_allowed(tmp_path: Path) -> None:
    bench = bench_module("scorecard")
    log, access = tmp_path / "d.jsonl", tmp_path / "access.log"
    bench.write_log(log, 2000, access=access)
    alone = tmp_path / "alone.jsonl"
    bench.write_log(alone, 2000)
    assert alone.read_text() == log.read_text()  # the access log draws from a random source of its own
    with DecisionLogs([str(log)]) as logs:
        summary = take_inventory(logs, access=AccessLogs([str(access)], logs)).access
        (denied_bytes,) = logs.query("SELECT sum(bytes_out + bytes_in) FROM _flows WHERE outcome = 'deny'")[0]
    assert summary is not None
    assert (summary.matched, summary.logged, summary.unmatched, summary.malformed) == (2000, 2000, 0, 0)
    assert denied_bytes == 0
