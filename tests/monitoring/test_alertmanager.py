"""deploy/monitoring/alertmanager.yaml with the real amtool: the
configuration checks, an alert about a policy goes to its owner's receiver
(every owner of the example policies has one), and authz's own alerts, which
have no owner, to the team that runs authz (critical ones to its pager)."""

from __future__ import annotations

import subprocess

import pytest

from authz.policy import load_paths
from tests.monitoring.files import ALERTMANAGER, alerts, tool
from tests.paths import EXAMPLES


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("amtool", "prometheus-alertmanager"), *args], capture_output=True, text=True,
                          check=False)  # fmt: skip


def _receiver(*labels: str) -> str:
    result = _amtool("config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_amtool_checks_the_configuration() -> None:
    result = _amtool("check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    "owner", sorted({loaded.model.metadata.owner for loaded in load_paths([EXAMPLES]).policies})
)
def test_an_alert_about_a_policy_goes_to_its_owner(owner: str) -> None:
    assert (
        _receiver("alertname=EgressAuthzDenySpike", "severity=warning", f"owner={owner}", "policy=p") == owner
    )


def test_authz_own_alerts_go_to_the_team_that_runs_it_and_critical_ones_to_its_pager() -> None:
    for name, alert in alerts().items():
        severity = alert["labels"]["severity"]
        expected = "egress-platform-pager" if severity == "critical" else "egress-platform"
        assert _receiver(f"alertname={name}", f"severity={severity}") == expected, name
    assert _receiver("alertname=EgressAuthzDenySpike", "severity=warning", "owner=team-nobody-routes") == (
        "egress-platform"
    )
