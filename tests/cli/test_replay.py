"""`authz replay` as CI runs it: the report, the JSON contract, and the exit
codes of the gate (1: new denies; 2: it could not tell)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.analysis.helpers import write_log
from tests.analysis.test_replay import AGENT, CI, TRAFFIC, documents, policy
from tests.cli.helpers import run_authz
from tests.paths import EXAMPLES


def policy_dir(path: Path, **narrowing: Any) -> Path:
    """The test's policies as YAML files, as a repository holds them."""
    path.mkdir()
    for document in documents(**narrowing):
        (path / f"{document['metadata']['name']}.yaml").write_text(yaml.safe_dump(document))
    return path


def test_the_gate_fails_on_new_denies_and_reports_them(tmp_path: Path) -> None:
    write_log(tmp_path / "d.jsonl", policy(), TRAFFIC)
    same = run_authz("replay", "--log", str(tmp_path / "d.jsonl"), "--policy", str(policy_dir(tmp_path / "same")),
                     "--fail-on-new-deny")  # fmt: skip
    assert same.returncode == 0, same.stderr
    narrowed = policy_dir(tmp_path / "narrowed", pypi=False, agent_paths=["/v1/chat/*"])
    result = run_authz("replay", "--log", str(tmp_path / "*.jsonl"), "--policy", str(narrowed), "--json",
                       "--fail-on-new-deny")  # fmt: skip
    assert result.returncode == 1
    assert "FAIL: 6 logged requests would be newly denied" in result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {
        "files", "malformed", "at", "policy_version", "baseline", "records", "requests", "not_replayed",
        "unchanged", "reason_changed", "new_denies", "new_allows",
    }  # fmt: skip
    assert report["baseline"] == "log"
    flows = {(flow["identity"], flow["destination"]): flow for flow in report["new_denies"]["flows"]}
    assert {key: flow["records"] for key, flow in flows.items()} == {
        (CI, "pypi.org:443"): 3, (CI, "files.pythonhosted.org:443"): 1, (AGENT, "api.openai.com:443"): 2,
    }  # fmt: skip
    (sample,) = flows[(AGENT, "api.openai.com:443")]["samples"]
    assert sample["was"] == {"verdict": "allow", "reason": "ALLOWED_BY_RULE"}
    assert (sample["method"], sample["path"], sample["now"]["reason"]) == (
        "GET",
        "/v1/models",
        "NO_MATCHING_RULE",
    )
    assert report["new_allows"] == {"records": 0, "flows_total": 0, "flows": []}


def test_against_a_baseline_nothing_changes_and_the_gate_passes(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", policy(), TRAFFIC)
    same = str(policy_dir(tmp_path / "same"))
    result = run_authz(
        "replay", "--log", str(log), "--policy", same, "--baseline", same, "--fail-on-new-deny"
    )
    assert result.returncode == 0, result.stderr
    assert "against baseline sha256:" in result.stdout
    assert "allowed -> denied: 0 records in 0 flows" in result.stdout
    assert "leaked" not in result.stderr  # DuckDB's binding stays quiet at exit


def test_text_report_names_the_flow_its_transition_and_a_sample(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", policy(), TRAFFIC)
    narrowed = policy_dir(tmp_path / "narrowed", agent_paths=["/v1/chat/*"])
    result = run_authz("replay", "--log", str(log), "--policy", str(narrowed))
    assert result.returncode == 0  # no gate asked for
    assert "allowed -> denied: 2 records in 1 flow" in result.stdout
    assert f"{AGENT} -> api.openai.com:443: 2 records, 1 request" in result.stdout
    assert "ALLOWED_BY_RULE -> NO_MATCHING_RULE: 2" in result.stdout
    assert "e.g. GET api.openai.com/v1/models (2 records" in result.stdout
    assert CI not in result.stdout.split("allowed -> denied")[1]  # the CI runner keeps what it had


def test_what_it_cannot_read_exits_2_and_says_why(tmp_path: Path) -> None:
    missing = run_authz("replay", "--log", str(tmp_path / "none-*.jsonl"), "--policy", str(EXAMPLES))
    assert missing.returncode == 2
    assert "none-*.jsonl: no such decision log" in missing.stderr
    log = write_log(tmp_path / "d.jsonl", policy(), TRAFFIC)
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "ci-runner.yaml").read_text().replace("ports: [443]", "ports: [0]", 1))
    broken = run_authz("replay", "--log", str(log), "--policy", str(bad), "--fail-on-new-deny")
    assert broken.returncode == 2
    assert f"{bad}:" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_the_window_is_read_as_inventory_reads_it(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", policy(), TRAFFIC)  # November 2026, a minute apart
    narrowed = str(policy_dir(tmp_path / "narrowed", pypi=False))
    recent = run_authz("replay", "--log", str(log), "--policy", narrowed, "--since", "1h", "--json")
    assert recent.returncode == 0, recent.stderr
    assert json.loads(recent.stdout)["records"] == 0  # nothing in the last hour
    window = ["--since", "2026-11-01T12:05:00Z", "--until", "2026-11-01T12:08:00Z"]  # records 5 to 7
    bounded = run_authz("replay", "--log", str(log), "--policy", narrowed, *window, "--json")
    assert json.loads(bounded.stdout)["records"] == 3
    assert json.loads(bounded.stdout)["new_denies"]["records"] == 3  # the three pypi connections
    empty = run_authz("replay", "--log", str(log), "--policy", narrowed, "--since", "1d", "--until", "2d")
    assert empty.returncode == 2
    assert "the window is empty" in empty.stderr


def test_a_log_cut_off_mid_gzip_exits_2_without_a_traceback(tmp_path: Path) -> None:
    import gzip

    log = write_log(tmp_path / "d.jsonl", policy(), TRAFFIC * 50)
    whole = gzip.compress(log.read_bytes())
    (tmp_path / "d.jsonl.1.gz").write_bytes(whole[: len(whole) // 2])
    result = run_authz(
        "replay", "--log", str(tmp_path / "d.jsonl.1.gz"), "--policy", str(policy_dir(tmp_path / "p"))
    )
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("authz replay: ")
    assert "Traceback" not in result.stderr
