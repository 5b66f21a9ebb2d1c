import json
from pathlib import Path

import pytest

from authz import Reason
from authz.cli import main
from authz.policy import load_paths
from tests.cli.helpers import run_authz
from tests.paths import EXAMPLE_FILES, EXAMPLES

PAYMENTS = "spiffe://prod.example.org/ns/payments/sa/payments-api"


def test_check_accepts_the_examples_each_warning_silenced_with_a_reason() -> None:
    result = run_authz("check", str(EXAMPLES))
    assert result.returncode == 0, result.stderr
    # The silenced count is left out: the example exception's expiry adds one from 2026-12-05 on.
    assert result.stdout.startswith(
        "ok: 7 policies, 14 rules, 2 exceptions, 2 revocations, 7 test files, 0 warnings, "
    )
    assert "warning" not in result.stderr  # tests/cli/test_check.py lists the silences
    assert "Traceback" not in result.stderr


def test_check_reports_errors_as_file_line_message(tmp_path: Path) -> None:
    bad = (EXAMPLES / "payments-api.yaml").read_text().replace("ports: [443]", "ports: [443, 0]", 1)
    (tmp_path / "payments-api.yaml").write_text(bad)
    result = run_authz("check", str(tmp_path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{tmp_path / 'payments-api.yaml'}:16: spec.egress[0].ports[1]: port 0 out of range 1-65535"
    ]


@pytest.mark.parametrize("text", ["\x00\x01", "[" * 50_000, "a: " + "b" * 10, "- 1\n" * 1000])
def test_check_never_shows_a_traceback(tmp_path: Path, text: str) -> None:
    (tmp_path / "p.yaml").write_text(text)
    result = run_authz("check", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(str(tmp_path / "p.yaml") + ":")


def test_explain_json_contract() -> None:
    result = run_authz(
        "explain", str(EXAMPLES), "--identity", PAYMENTS, "--host", "bank-gateway.example.com", "--port", "443",
        "--method", "POST", "--path", "/v1/payments/1", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["allowed"] is True
    assert record["verdict"] == "allow"
    assert record["reason"] == "ALLOWED_BY_RULE"
    assert record["policy"] == "payments-api"
    assert record["rule"] == "bank-gateway"
    assert record["mode"] == "enforce"
    assert record["steps"]


def test_explain_deny_still_exits_zero_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["explain", str(EXAMPLES), "--identity", PAYMENTS, "--host", "pastebin.com", "--port", "443"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("DENY  NO_MATCHING_RULE\n")
    assert "  - no rule of payments-api names host pastebin.com" in out


def test_explain_without_identity(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(EXAMPLES), "--host", "github.com", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["allowed"], record["reason"], record["policy"], record["rule"]) == (
        False,
        "NO_IDENTITY",
        None,
        None,
    )


def test_explain_usage_and_policy_errors_exit_2(tmp_path: Path) -> None:
    assert run_authz("explain", str(EXAMPLES), "--identity", PAYMENTS).returncode == 2  # no --host
    assert run_authz("explain", str(EXAMPLES), "--host", "a.com", "--port", "70000").returncode == 2
    (tmp_path / "p.yaml").write_text("kind: nope\n")
    result = run_authz("explain", str(tmp_path), "--host", "a.com")
    assert result.returncode == 2
    assert "p.yaml:1: apiVersion: must be 'egress-authz/v1'" in result.stderr


def test_test_command_runs_the_examples() -> None:
    result = run_authz("test", str(EXAMPLES))
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[-1] == "42 passed, 0 failed"


def test_test_command_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    for path in EXAMPLE_FILES:
        (tmp_path / path.name).write_text(path.read_text())
    wrong = (
        (EXAMPLES / "tests" / "ci-runner.test.yaml")
        .read_text()
        .replace("expect: {verdict: deny, reason: NO_MATCHING_RULE}", "expect: {verdict: allow}", 1)
    )
    (tmp_path / "ci.test.yaml").write_text(wrong)
    result = run_authz("test", str(tmp_path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[-1] == "9 passed, 1 failed"
    assert lines[0].startswith(f"{tmp_path / 'ci.test.yaml'}:23: FAIL a subdomain of an allowed host")
    assert "verdict deny, expected allow" in lines[0]


def test_test_command_without_cases_fails(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text((EXAMPLES / "ci-runner.yaml").read_text())
    result = run_authz("test", str(tmp_path))
    assert result.returncode == 1
    assert "no EgressPolicyTest cases found" in result.stderr


def test_the_examples_test_every_reason_the_engine_gives() -> None:
    server_only = {Reason.NO_POLICY, Reason.INTERNAL_ERROR, Reason.TIMEOUT}  # tests/test_server.py
    cases = [case for loaded in load_paths([EXAMPLES]).tests for case in loaded.model.spec.cases]
    assert {case.expect.reason for case in cases} >= set(Reason) - server_only
