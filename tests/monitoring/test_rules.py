"""deploy/monitoring/egress-authz.rules.yaml with the real promtool: it
checks, and its unit tests (tests/monitoring/*.test.yaml) pass, with a case
where each alert fires and one where it stays silent; every alert says how
bad, to whom, what and which `authz` command to run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.files import (
    JOB,
    PROMETHEUS_RULE,
    RULES,
    UNIT_TESTS,
    alerts,
    prometheus_rule,
    rule_groups,
    rules,
    tool,
)

SEVERITIES = {"critical", "warning", "info"}
# Alerts about one policy: grouped by it, so that they carry its owner (Alertmanager routes on it).
BY_POLICY = {"EgressAuthzDenySpike", "EgressAuthzNewDestination", "EgressAuthzRequestVolumeAnomaly",
             "EgressAuthzExceptionExpiring", "EgressAuthzShadowDisagreement"}  # fmt: skip


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [tool("promtool", "prometheus"), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    assert set(alerts()) >= {
        "EgressAuthzDown", "EgressAuthzAbsent", "EgressAuthzNotServing", "EgressAuthzPolicyRejected",
        "EgressAuthzDenySpike", "EgressAuthzNewDestination", "EgressAuthzRequestVolumeAnomaly",
        "EgressAuthzExceptionExpiring", "EgressAuthzTelemetryDropped", "EgressAuthzShadowDisagreement",
    }  # fmt: skip


def test_every_alert_has_a_severity_a_summary_and_a_runbook_naming_an_authz_command() -> None:
    for name, alert in alerts().items():
        assert alert["labels"]["severity"] in SEVERITIES, name
        assert set(alert["annotations"]) == {"summary", "description", "runbook"}, name
        assert re.search(r"`authz [a-z-]+ ", alert["annotations"]["runbook"]), name
        for static in ("description", "runbook"):  # _completed() copies them into the unit tests as they are
            assert "{{" not in alert["annotations"][static], (name, static)


def test_alerts_about_a_policy_keep_its_owner_and_no_rule_groups_by_identity_or_host() -> None:
    for name in BY_POLICY:
        assert re.search(r"\bby \([^)]*\bowner\b", _expression(name)), name
    for rule in rules():
        for grouping in re.findall(r"\b(?:by|without|on)\s*\(([^)]*)\)", rule["expr"]):
            assert not {"identity", "host", "destination", "sni"} & {g.strip() for g in grouping.split(",")}


def _expression(alert: str) -> str:
    """An alert's expression with the recording rules it reads spelled out."""
    recorded = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    text = alerts()[alert]["expr"]
    for name, expr in recorded.items():
        text = text.replace(name, f"({expr})")
    return text


def _cases() -> list[tuple[str, dict[str, Any]]]:
    return [
        (file.name, case)
        for file in UNIT_TESTS
        for test in yaml.safe_load(file.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    fires = {case["alertname"] for _, case in _cases() if case.get("exp_alerts")}
    silent = {case["alertname"] for _, case in _cases() if not case.get("exp_alerts")}
    assert fires == set(alerts())
    assert silent == set(alerts())
    for file, case in _cases():
        for expected in case.get("exp_alerts") or []:
            labels = expected["exp_labels"]
            assert labels["severity"] == alerts()[case["alertname"]]["labels"]["severity"], (file, case)
            assert ("policy" in labels) <= ("owner" in labels), (file, case)
            assert labels.get("job", JOB) == JOB


def _completed(file: Path, directory: Path, order: list[str] | None = None) -> Path:
    """A unit-test file as promtool reads it: each expected alert's description and runbook
    (static text) added to its summary, the rule file named by its absolute path, the rule
    groups evaluated in ``order`` at each instant (default: as the rule file lists them)."""
    tests = yaml.safe_load(file.read_text())
    assert tests["rule_files"] == ["../../deploy/monitoring/egress-authz.rules.yaml"]
    tests["rule_files"] = [str(RULES)]
    tests["group_eval_order"] = order or [group["name"] for group in rule_groups()]
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            annotations = alerts()[case["alertname"]]["annotations"]
            for expected in case.get("exp_alerts") or []:
                assert set(expected["exp_annotations"]) == {"summary"}
                expected["exp_annotations"].update(
                    {key: value for key, value in annotations.items() if key != "summary"}
                )
    path = directory / file.name
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    return path


@pytest.mark.parametrize("recorded_first", [True, False], ids=["recording first", "alerts first"])
def test_promtool_runs_the_unit_tests_of_every_alert(tmp_path: Path, recorded_first: bool) -> None:
    """In both orders of the groups at each instant: promtool's default order is not fixed, and a
    real Prometheus evaluates each group on its own schedule, so an alert may read what the
    recording rules wrote one interval before. (Not the volume test's alerts first: evaluated
    every 10 minutes, longer than the 5-minute lookback, an alert would read no recording at all.)"""
    assert [file.name for file in UNIT_TESTS] == [
        "egress-authz.rules.test.yaml",
        "egress-authz.volume.test.yaml",
    ]
    order = [group["name"] for group in rule_groups()]
    assert order == ["egress-authz.recording", "egress-authz.alerts"]
    chosen = UNIT_TESTS if recorded_first else UNIT_TESTS[:1]
    files = [str(_completed(file, tmp_path, order if recorded_first else order[::-1])) for file in chosen]
    result = subprocess.run(
        [tool("promtool", "prometheus"), "test", "rules", *files], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files), result.stdout


def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    """The unit tests hold the rules to their meaning: a floor lowered tenfold makes a silent case fire."""
    broken = tmp_path / "broken.rules.yaml"
    text = RULES.read_text()
    assert text.count("policy:egress_authz_denies:rate5m > 0.05") == 1
    broken.write_text(
        text.replace("policy:egress_authz_denies:rate5m > 0.05", "policy:egress_authz_denies:rate5m > 0.005")
    )
    tests = _completed(UNIT_TESTS[0], tmp_path)
    spike = yaml.safe_load(tests.read_text())
    spike["rule_files"] = [str(broken)]
    spike["tests"] = [test for test in spike["tests"] if test["name"] == "a deny spike per policy"]
    tests.write_text(yaml.safe_dump(spike, sort_keys=False))
    result = subprocess.run(
        [tool("promtool", "prometheus"), "test", "rules", str(tests)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "EgressAuthzDenySpike" in result.stdout + result.stderr


def test_the_prometheus_rule_is_current() -> None:
    """deploy/kubernetes/monitoring/prometheusrule.yaml holds this file's groups (its Kubernetes
    rendering and validation: tests/deploy/test_monitoring.py)."""
    assert PROMETHEUS_RULE.read_text() == prometheus_rule(), "stale: run `make monitoring-rules`"
