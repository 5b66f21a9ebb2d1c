"""``authz scorecard`` as a user runs it: the formats, --git, and a clear
exit 2 for logs, policies or a history that cannot be read."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.analysis.scorecard_data import (
    HISTORY,
    RECORDS,
    TITLES,
    git_policy_repo,
    write_log,
    write_policies,
)  # fmt: skip
from tests.analysis.test_access_log import line
from tests.cli.helpers import run_authz


def test_markdown_on_stdout_by_default_with_every_metric(tmp_path: Path) -> None:
    policies, log = write_policies(tmp_path / "policies"), write_log(tmp_path / "d.jsonl")
    result = run_authz("scorecard", "--log", str(log), "--policy", str(policies))
    assert result.returncode == 0, result.stderr
    assert re.findall(r"^## (.+)$", result.stdout, re.MULTILINE) == TITLES
    assert "**not computed: pass --git**" in result.stdout


def test_out_picks_the_format_by_its_suffix_and_logs_may_be_globs(tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "policies")
    write_log(tmp_path / "d.jsonl")
    write_log(tmp_path / "d.jsonl.1")  # a rotation: every record twice
    html, markdown = tmp_path / "report.html", tmp_path / "report.md"
    for out in (html, markdown):
        result = run_authz(
            "scorecard", "--log", str(tmp_path / "d.jsonl*"), "--policy", str(policies), "--out", str(out)
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
    assert html.read_text().startswith("<!DOCTYPE html>")
    assert "<svg" in html.read_text()
    assert "| **checks** | 34 (0 malformed lines skipped) |" in markdown.read_text()
    refused = run_authz(
        "scorecard", "--log", str(tmp_path / "d.jsonl"), "--policy", str(policies), "--out", "r.pdf"
    )
    assert refused.returncode == 2
    assert "name a .html or .md file" in refused.stderr


def test_json(tmp_path: Path) -> None:
    policies, log = write_policies(tmp_path / "policies"), write_log(tmp_path / "d.jsonl")
    result = run_authz("scorecard", "--log", str(log), "--policy", str(policies), "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["unknown_destinations"]["rate"]["numerator"] == 5
    assert found["dry_run"]["policies"][0]["rate"]["value"] == 0.5


def test_access_log_adds_the_bytes(tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "policies")
    log = write_log(tmp_path / "d.jsonl", [{**RECORDS[0], "decision_id": "s0"}])
    access = tmp_path / "access.log"
    access.write_text(json.dumps(line("s0", 10_000, 1_000)) + "\n")
    result = run_authz(
        "scorecard", "--log", str(log), "--policy", str(policies), "--access-log", str(access), "--json"
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["bytes_by_identity"]["identities"][0]["bytes_out"] == 10_000
    assert found["access_log"]["matched"] == 1
    missing = run_authz(
        "scorecard", "--log", str(log), "--policy", str(policies), "--access-log", str(tmp_path / "no.log")
    )
    assert (missing.returncode, missing.stdout) == (2, "")
    assert "no.log: no such access log" in missing.stderr


def test_git_reads_the_exception_half_life_from_the_policy_repository(tmp_path: Path) -> None:
    policies, log = git_policy_repo(tmp_path / "repo", HISTORY), write_log(tmp_path / "d.jsonl")
    result = run_authz("scorecard", "--log", str(log), "--policy", str(policies), "--git")
    assert result.returncode == 0, result.stderr
    assert "**5.0 days (median of 2 removed)**" in result.stdout
    assert (
        "| payments-api | b | B-1 | 2026-10-01 12:00:00Z | 2026-10-09 12:00:00Z | 8.0 days |" in result.stdout
    )


def test_what_cannot_be_read_is_a_clear_error_and_exit_2(tmp_path: Path) -> None:
    policies, log = write_policies(tmp_path / "policies"), write_log(tmp_path / "d.jsonl")
    cases = {
        "no such decision log": ("--log", str(tmp_path / "missing-*.jsonl"), "--policy", str(policies)),
        "nowhere:0: cannot read: No such file or directory": (
            "--log",
            str(log),
            "--policy",
            str(tmp_path / "nowhere"),
        ),
        "--git needs the policy repository's history: ": (
            "--log",
            str(log),
            "--policy",
            str(policies),
            "--git",
        ),
    }
    for message, args in cases.items():
        result = run_authz("scorecard", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == ""
    (policies / "broken.yaml").write_text("kind: [unclosed\n")
    result = run_authz("scorecard", "--log", str(log), "--policy", str(policies))
    assert (result.returncode, "broken.yaml:" in result.stderr) == (2, True)


def test_the_other_commands_do_not_import_duckdb_or_matplotlib() -> None:
    code = "import sys, authz.cli; print(sorted({'duckdb', 'matplotlib'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"  # a second of imports that `authz serve` does not pay


def test_at_judges_the_exceptions_at_the_report_s_instant(tmp_path: Path) -> None:
    """A report made again later says what it said then: `--at` is its instant."""
    policies, log = write_policies(tmp_path / "policies"), write_log(tmp_path / "d.jsonl")
    states = {}
    for at in ("2026-11-21T00:00:00Z", "2026-11-23T12:00:00Z", "2026-12-21T00:00:00Z"):
        result = run_authz("scorecard", "--log", str(log), "--policy", str(policies), "--json", "--at", at)
        assert result.returncode == 0, result.stderr
        found = json.loads(result.stdout)
        assert found["generated"].startswith(at[:19])
        states[at[:10]] = [use["state"] for use in found["exceptions"]["exceptions"]]
    assert states == {
        "2026-11-21": ["expiring", "open"], "2026-11-23": ["expired", "open"], "2026-12-21": ["expired", "expired"],
    }  # fmt: skip
    refused = run_authz("scorecard", "--log", str(log), "--policy", str(policies), "--at", "2026-11-23")
    assert refused.returncode == 2
    assert "has no offset" in refused.stderr
