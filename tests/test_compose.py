"""docker-compose.yml is for users with a Docker engine; check what can be checked here."""

import yaml

from tests.paths import ROOT


def test_policy_check_service_runs_the_ci_gate_on_the_shipped_policies() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["policy-check"]
    assert service["image"].startswith("python:3.11")
    assert "./:/src" in service["volumes"]
    command = service["command"]
    assert "authz check policies" in command
    assert "authz test policies" in command
    assert (ROOT / "policies").is_dir()
