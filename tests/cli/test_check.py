"""``authz check`` as CI runs it: --strict, --silenced, the thresholds, and
--log for unused rules on a small hand-made decision log."""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.cli.helpers import run_authz
from tests.paths import EXAMPLES

POLICY = """\
apiVersion: egress-authz/v1
kind: EgressPolicy
metadata: {name: svc, owner: team, change_ref: CHG-1}
spec:
  identities: [spiffe://prod.example.org/ns/a/sa/svc]
  egress:
    - id: api
      hosts: [api.example.com]
      ports: [443]
      purpose: the API
    - id: billing
      hosts: [billing.example.com]
      ports: [443]
      purpose: invoices
"""


def write(directory: Path, text: str = POLICY, name: str = "svc.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)
    return directory


def test_the_examples_pass_strict_and_list_their_silences() -> None:
    result = run_authz("check", "--strict", "--silenced", str(EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert "warning:" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["WHERE", "SILENCES", "CODES", "(warnings", "silenced)", "REASON"]
    rows = {line.split()[1]: line for line in lines[1:-1]}
    assert set(rows) == {
        "analytics-etl", "analytics-etl/buckets", "partner-sync", "partner-sync/api-provider",
        "payments-api/backup-fraud-scoring", "payments-api/bank-cutover",
    }  # fmt: skip
    assert rows["analytics-etl"].startswith(f"{EXAMPLES / 'analytics-etl.yaml'}:9 ")
    assert " IDENTITY_PREFIX (1) " in rows["analytics-etl"]
    assert " WILDCARD_DESTINATION (1) " in rows["partner-sync/api-provider"]
    # In dry-run since 2026-11-22: pending until 14 days have passed, silenced from then on.
    assert re.search(r" DRY_RUN_TOO_OLD \((pending|1)\) ", rows["partner-sync"])
    assert "the vendor serves one regional endpoint per region" in rows["partner-sync/api-provider"]
    # The example of an expired exception has expired whatever the date; the open one, from 2026-12-05.
    assert " EXCEPTION_EXPIRED (1) " in rows["payments-api/bank-cutover"]
    assert re.search(r" EXCEPTION_EXPIRED \((pending|1)\) ", rows["payments-api/backup-fraud-scoring"])
    assert lines[-1].startswith(
        "ok: 7 policies, 14 rules, 2 exceptions, 2 revocations, 7 test files, 0 warnings, "
    )


def test_strict_fails_on_warnings_and_says_how_many(tmp_path: Path) -> None:
    directory = write(
        tmp_path,
        POLICY.replace("      purpose: the API\n", "").replace(
            "[billing.example.com]", '["*.billing.example.com"]'
        ),
    )
    plain = run_authz("check", str(directory))
    assert plain.returncode == 0
    assert plain.stdout.startswith(
        "ok: 1 policies, 2 rules, 0 exceptions, 0 revocations, 0 test files, 2 warnings,"
    )
    assert (
        f"{directory / 'svc.yaml'}:7: warning: spec.egress[0]: RULE_WITHOUT_PURPOSE: rule api" in plain.stderr
    )
    strict = run_authz("check", "--strict", str(directory))
    assert strict.returncode == 1
    assert strict.stdout.startswith("failed: 1 policies")
    assert strict.stderr.splitlines()[-1].startswith("authz check --strict: 2 warnings not silenced")
    silenced = POLICY.replace(
        "CHG-1}", "CHG-1, lint: {ignore: [RULE_WITHOUT_PURPOSE], reason: being written}}"
    )
    write(directory, silenced.replace("      purpose: the API\n", ""))
    assert run_authz("check", "--strict", str(directory)).returncode == 0


def test_an_unknown_code_fails_even_without_strict(tmp_path: Path) -> None:
    directory = write(
        tmp_path, POLICY.replace("the API\n", "the API\n      lint: {ignore: [WILDCARD], reason: x}\n")
    )
    result = run_authz("check", str(directory))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{directory / 'svc.yaml'}:11: spec.egress[0].lint.ignore[0]: unknown lint code 'WILDCARD'"
    ]


def test_a_stale_silence_fails_strict_and_is_marked_in_the_listing(tmp_path: Path) -> None:
    directory = write(
        tmp_path, POLICY.replace("CHG-1}", "CHG-1, lint: {ignore: [CIDR_DESTINATION], reason: old}}")
    )
    result = run_authz("check", "--strict", "--silenced", str(directory))
    assert result.returncode == 1
    assert (
        "svc.yaml:3: warning: metadata.lint.ignore[0]: STALE_SILENCE: CIDR_DESTINATION silences"
        in result.stderr
    )
    assert result.stdout.splitlines()[1].split()[1:] == ["svc", "CIDR_DESTINATION", "(stale)", "old"]


def test_no_silences_listed(tmp_path: Path) -> None:
    result = run_authz("check", "--silenced", str(write(tmp_path)))
    assert result.returncode == 0
    assert result.stdout.splitlines()[0] == "no silences"


def test_the_shared_destination_threshold(tmp_path: Path) -> None:
    for n in range(3):
        other = POLICY.replace("name: svc", f"name: s{n}").replace("sa/svc]", f"sa/s{n}]")
        write(tmp_path, other, f"s{n}.yaml")
    write(tmp_path)
    result = run_authz("check", str(tmp_path))
    assert result.stderr.count("SHARED_DESTINATION: api.example.com:443 is allowed for 4 identities") == 4
    assert result.stderr.count("SHARED_DESTINATION: billing.example.com:443 is allowed for 4") == 4
    assert "warning" not in run_authz("check", str(tmp_path), "--max-identities-per-destination", "4").stderr
    assert run_authz("check", str(tmp_path), "--max-identities-per-destination", "0").returncode == 2


def _log(path: Path, *records: dict[str, Any]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _decision(day: int, rule: str | None = "api", **fields: Any) -> dict[str, Any]:
    time = (datetime(2026, 10, 1, tzinfo=UTC) + timedelta(days=day)).isoformat().replace("+00:00", "Z")
    return {"time": time, "verdict": "allow", "reason": "ALLOWED_BY_RULE", "policy": "svc", "rule": rule,
            "identity": "spiffe://prod.example.org/ns/a/sa/svc", "host": "api.example.com", "port": 443} | fields  # fmt: skip


def test_log_finds_rules_unused_in_its_last_days(tmp_path: Path) -> None:
    directory = write(tmp_path / "policies")
    log = _log(
        tmp_path / "decisions.log",
        _decision(0, "billing"),  # 40 days before the newest record: outside the last 30
        _decision(20),
        _decision(40, None, verdict="deny", reason="NO_MATCHING_RULE", host="pastebin.com"),
    )
    result = run_authz("check", str(directory), "--log", str(log))
    assert result.returncode == 0
    (warning,) = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warning == (
        f"{directory / 'svc.yaml'}:11: warning: spec.egress[1]: UNUSED_RULE: rule billing was named by no decision"
        " from 2026-10-11T00:00:00Z to 2026-11-10T00:00:00Z (the log's last 30 days): remove it, or say why it stays"
    )
    assert (
        "warning" not in run_authz("check", str(directory), "--log", str(log), "--unused-days", "40").stderr
    )
    both = run_authz("check", str(directory), "--log", str(log), "--unused-days", "15")
    assert both.stderr.count("UNUSED_RULE") == 2
    too_short = run_authz("check", str(directory), "--log", str(log), "--unused-days", "41")
    assert "warning" not in too_short.stderr
    assert (
        "note: the log spans 40.0 days, less than --unused-days 41: unused rules not checked"
        in too_short.stderr
    )


def test_an_exception_is_used_when_a_decision_names_it(tmp_path: Path) -> None:
    expires = (datetime.now(UTC) + timedelta(days=5)).isoformat()
    exception = f"  exceptions:\n    - {{id: hotfix, hosts: [x.example], ports: [443], owner: a, reason: b, ticket: T, expires: {expires}}}\n"
    directory = write(tmp_path / "policies", POLICY + exception)
    log = _log(
        tmp_path / "d.log", _decision(0), _decision(5, "billing"), _decision(31, None, exception="hotfix")
    )
    result = run_authz("check", str(directory), "--log", str(log))
    assert [line.split(": ")[3] for line in result.stderr.splitlines() if "warning" in line] == [
        "UNUSED_RULE"
    ]
    assert "rule api was named by no decision" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--unused-days", "7"], "authz check: --unused-days needs --log"),
        (
            ["--log", "/nonexistent/decisions.log"],
            "authz check: /nonexistent/decisions.log: no such decision log",
        ),
        (["--max-dry-run-days", "soon"], "'soon' is not a number of days"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_authz("check", str(write(tmp_path)), *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_dry_run_age_from_git_and_a_note_without_git(tmp_path: Path) -> None:
    dry_run = POLICY.replace("  egress:\n", "  mode: dry-run\n  egress:\n")
    outside = run_authz("check", str(write(tmp_path / "plain", dry_run)))
    assert outside.returncode == 0
    assert "note: no git history (" in outside.stderr
    assert "dry-run ages come from metadata.since only" in outside.stderr
    assert "note:" not in run_authz("check", str(write(tmp_path / "enforced"))).stderr  # no date wanted

    repo = tmp_path / "repo"
    write(repo / "policies", dry_run)
    week_ago = (datetime.now(UTC) - timedelta(days=7)).isoformat()
    env = {**os.environ, "GIT_AUTHOR_DATE": week_ago, "GIT_COMMITTER_DATE": week_ago}
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "dry run"],
    ):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    assert "warning" not in run_authz("check", str(repo / "policies")).stderr  # 7 days: within 14
    result = run_authz("check", str(repo / "policies"), "--max-dry-run-days", "5")
    assert "spec.mode: DRY_RUN_TOO_OLD: policy svc has been in dry-run for 7 days (since " in result.stderr
    assert ", from git), longer than 5: enforce it, or fix what it would deny" in result.stderr
