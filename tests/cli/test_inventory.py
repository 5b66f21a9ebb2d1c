"""``authz inventory`` as a user runs it: the three outputs, the policy
review, the window, the flow map and the drafts, and exit 2 with a clear
message for what cannot be read."""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.analysis.test_inventory import TRAFFIC
from tests.analysis.traffic import CI, http, records, write_log
from tests.cli.helpers import run_authz
from tests.paths import EXAMPLES


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return write_log(tmp_path / "decisions.jsonl", [*records(TRAFFIC), "not a record"])


def test_text_is_the_default_and_json_and_markdown_are_one_flag_away(log: Path) -> None:
    text = run_authz("inventory", str(log))
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("Inventory of 15 decisions from 1 file (1 malformed line skipped)\n")
    assert f"\n{CI}  (policy ci-runner)\n" in text.stdout
    assert "\n  ! pastebin.com:443 " in text.stdout
    assert text.stderr == ""

    document = json.loads(run_authz("inventory", str(log), "--json").stdout)
    assert (document["records"], document["malformed"], document["unknown_by"], document["policy"]) == (
        15, 1, "log", None
    )  # fmt: skip
    assert document["identities"][0]["identity"] == CI
    assert document["identities"][-1]["identity"] is None

    markdown = run_authz("inventory", str(log), "--markdown")
    assert markdown.stdout.startswith("# Egress inventory\n")
    both = run_authz("inventory", str(log), "--json", "--markdown")
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr


def test_with_a_policy_unknown_is_judged_by_it_and_the_review_is_printed(log: Path) -> None:
    result = run_authz("inventory", str(log), "--policy", str(EXAMPLES), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing else: no warning from DuckDB's binding at exit either
    document = json.loads(result.stdout)
    assert document["unknown_by"] == "policy"
    unused = {f"{rule['policy']}/{rule['id']}" for rule in document["policy"]["unused_rules"]}
    assert {"ci-runner/pypi", "payments-api/kms"} <= unused
    assert "ci-runner/npm-registry" not in unused
    assert document["policy"]["identities_without_policy"] == ["spiffe://prod.example.org/ns/web/sa/frontend"]
    text = run_authz("inventory", str(log), "--policy", str(EXAMPLES)).stdout
    assert "rules and exceptions these logs never used (11 of 16):" in text
    assert "    ci-runner/pypi (rule, pypi.org, files.pythonhosted.org)  " in text


def test_since_and_until_take_rfc3339_or_a_span_back_from_now(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    traffic = [
        ((now - timedelta(days=10)).isoformat(), http(CI, "registry.npmjs.org")),
        ((now - timedelta(hours=1)).isoformat(), http(CI, "github.com")),
    ]
    log = write_log(tmp_path / "d.jsonl", records(traffic))
    recent = json.loads(run_authz("inventory", str(log), "--since", "2d", "--json").stdout)
    assert [d["host"] for d in recent["identities"][0]["destinations"]] == ["github.com"]
    older = json.loads(run_authz("inventory", str(log), "--until", "2d", "--json").stdout)
    assert [d["host"] for d in older["identities"][0]["destinations"]] == ["registry.npmjs.org"]
    exact = run_authz(
        "inventory", str(log), "--since", "2026-11-01T00:00:00Z", "--until", "2026-11-02T00:00:00Z"
    )
    assert exact.returncode == 0
    assert exact.stdout.startswith("Inventory of 0 decisions from 1 file\n")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--since", "last week"], "is neither an RFC 3339 time"),
        (["--since", "2026-11-02T00:00:00"], "has no offset"),
        (["--since", "1d", "--until", "2d"], "the window is empty"),
        (["--graph", "flows.gif"], "the flow map is drawn as .svg, .png, .pdf"),
    ],
)
def test_bad_arguments_exit_2_saying_why(log: Path, arguments: list[str], message: str) -> None:
    result = run_authz("inventory", str(log), *arguments)
    assert (result.returncode, result.stdout) == (2, "")
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_log_that_is_not_there_exits_2(tmp_path: Path) -> None:
    for pattern in (tmp_path / "missing.jsonl", tmp_path / "decisions-*.jsonl"):
        result = run_authz("inventory", str(pattern))
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr == f"authz inventory: error: {pattern}: no such decision log\n"


def test_a_policy_that_does_not_load_exits_2(log: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("apiVersion: egress-authz/v1\nkind: EgressPolicy\n")
    result = run_authz("inventory", str(log), "--policy", str(tmp_path / "bad.yaml"))
    assert (result.returncode, result.stdout) == (2, "")
    assert "bad.yaml:" in result.stderr


@pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz's dot is missing: install the Debian package graphviz"
)
def test_graph_and_propose_then_the_drafts_pass_check(log: Path, tmp_path: Path) -> None:
    drafts = tmp_path / "drafts"
    result = run_authz(
        "inventory",
        str(log),
        "--graph",
        str(tmp_path / "flows.svg"),
        "--graph-edges",
        "5",
        "--propose",
        str(drafts),
    )
    assert result.returncode == 0, result.stderr
    assert f"flow map: {tmp_path / 'flows.svg'} (5 of 11 identity-destination pairs; 6 pairs" in result.stderr
    assert (tmp_path / "flows.svg").read_text().startswith("<?xml")
    assert f"proposed 5 drafts in {drafts}:" in result.stderr
    assert "  no draft: 1 record without an identity: no policy can name them" in result.stderr
    assert sorted(path.name for path in drafts.iterdir()) == [
        "ci-runner.yaml", "exporter.yaml", "frontend.yaml", "partner-sync.yaml", "payments-api.yaml"
    ]  # fmt: skip
    check = run_authz("check", str(drafts))
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok: 5 policies, 8 rules, 0 exceptions")

    again = run_authz("inventory", str(log), "--propose", str(drafts))
    assert again.returncode == 2
    assert "pass --force to replace them" in again.stderr
    forced = run_authz("inventory", str(log), "--propose", str(drafts), "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["records"] == 15


def test_a_gzipped_log_cut_short_exits_2(log: Path, tmp_path: Path) -> None:
    whole = gzip.compress(log.read_bytes())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    result = run_authz("inventory", str(tmp_path / "cut.jsonl.gz"))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("authz inventory: error: cannot read the logs: ")
    assert "Traceback" not in result.stderr
