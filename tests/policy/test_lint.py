from authz.policy import lint, load_policy
from tests.policy.conftest import WriteFiles
from tests.policy.test_load import GOOD


def _warnings(write_files: WriteFiles, **files: str) -> list[str]:
    policy_set, _ = load_policy([write_files(**files)])
    return [str(warning) for warning in lint(policy_set)]


def test_a_tidy_policy_has_no_warnings(write_files: WriteFiles) -> None:
    tidy = GOOD.replace("      ports: [443]", "      ports: [443]\n      purpose: the API")
    assert _warnings(write_files, a=tidy) == []


def test_broad_grants_are_reported_at_their_lines(write_files: WriteFiles) -> None:
    broad = (
        GOOD.replace("ns/a/sa/svc]", "ns/a/*]")
        .replace("[api.example.com]", '["*.example.com", 10.0.0.0/8, 169.254.169.254]')
        .replace("[443]", '["1-65535"]')
        .replace(", change_ref: CHG-1", "")
        .replace("  egress:", "  mode: dry-run\n  allow_sni_host_mismatch: true\n  egress:")
    )
    warnings = _warnings(write_files, a=broad)
    expected = [
        ":3: warning: metadata: policy svc has no change_ref",
        ":6: warning: spec.mode: policy svc is in dry-run",
        ":7: warning: spec.allow_sni_host_mismatch: policy svc lets a TLS SNI disagree with the HTTP host",
        ":5: warning: spec.identities[0]: identity prefix spiffe://prod.example.org/ns/a/* admits",
        ":9: warning: spec.egress[0]: rule api has no purpose",
        ":10: warning: spec.egress[0].hosts[0]: wildcard *.example.com admits",
        ":10: warning: spec.egress[0].hosts[1]: CIDR 10.0.0.0/8 admits",
        ":10: warning: spec.egress[0].hosts[2]: 169.254.169.254 is a cloud metadata endpoint",
        ":11: warning: spec.egress[0].ports[0]: port range 1-65535 spans 65535 ports",
    ]
    assert len(warnings) == len(expected)
    for want, got in zip(expected, warnings, strict=True):
        assert want in got


def test_exact_id_shadowing_a_prefix_is_reported(write_files: WriteFiles) -> None:
    prefix = GOOD.replace("name: svc", "name: ns").replace("ns/a/sa/svc]", "ns/a/*]")
    warnings = _warnings(write_files, a=GOOD, b=prefix)
    assert any(
        "is also covered by spiffe://prod.example.org/ns/a/* of policy ns; the exact ID wins" in w
        for w in warnings
    )


def test_empty_policy_denies_everything(write_files: WriteFiles) -> None:
    empty = GOOD.split("  egress:")[0] + "  egress: []\n"
    assert any(
        "has no rules: its identities are denied everything" in w for w in _warnings(write_files, a=empty)
    )
