"""No alert and no panel over a metric that does not exist: a real `authz
serve`, scraped after a few checks, exports every name the rules and the
dashboard read, with the labels they group by; and every panel's expression
parses (promtool, through a generated rules file)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.monitoring.conftest import Served, expected_names
from tests.monitoring.files import metric_names, read_names, recorded, targets, tool


def test_every_metric_a_rule_or_a_panel_reads_is_exported(served: Served) -> None:
    wanted = expected_names()
    assert {"egress_authz_decisions_total", "egress_authz_exception_expiry_timestamp_seconds",
            "egress_authz_check_duration_seconds_bucket", "egress_authz_shadow_disagreements_total",
            "process_start_time_seconds"} <= wanted  # fmt: skip
    missing = {name: sorted(read_names()[name]) for name in wanted - served.names}
    assert missing == {}


def test_a_name_is_either_exported_or_recorded_by_a_rule_or_prometheus_own_up() -> None:
    """Every name read is one of authz's, a recording rule's, or `up`: none is misspelled
    into nothing (what test_every_metric_... cannot see for a recorded name)."""
    unknown = set(read_names()) - expected_names() - recorded() - {"up"}
    assert unknown == set()
    assert recorded() <= set(read_names())  # every recording rule is read by an alert or a panel


def test_the_series_carry_the_labels_the_rules_group_by(served: Served) -> None:
    samples = {
        sample.name: sample.labels
        for family in text_string_to_metric_families(served.exposition)
        for sample in family.samples
        if sample.labels.get("policy") or sample.name.startswith("egress_authz_spans_dropped")
    }
    assert set(samples["egress_authz_decisions_total"]) >= {"policy", "owner", "verdict", "reason", "mode"}
    assert set(samples["egress_authz_first_seen_destinations_total"]) >= {"policy", "owner"}
    assert set(samples["egress_authz_shadow_disagreements_total"]) >= {"policy", "owner", "verdict",
                                                                       "shadow_verdict", "shadow_reason"}  # fmt: skip
    assert "cause" in samples["egress_authz_spans_dropped_total"]
    for name, labels in samples.items():  # bounded: never an identity or a host
        assert not {"identity", "host", "destination", "sni"} & set(labels), name
        assert not any(value.startswith("spiffe://") for value in labels.values()), name


def test_the_exception_expiry_is_the_policy_files_and_names_both_owners(served: Served) -> None:
    expiries = {
        sample.labels["exception"]: sample
        for family in text_string_to_metric_families(served.exposition)
        for sample in family.samples
        if sample.name == "egress_authz_exception_expiry_timestamp_seconds"
    }
    assert set(expiries) == {"backup-fraud-scoring", "bank-cutover"}
    expired = datetime(2025, 3, 31, 18, tzinfo=UTC)  # as policies/payments-api.yaml has it: long past
    assert expiries["bank-cutover"].value == expired.timestamp()
    sample = expiries["backup-fraud-scoring"]
    assert {key: sample.labels[key] for key in ("policy", "exception", "owner", "exception_owner")} == {
        "policy": "payments-api",
        "exception": "backup-fraud-scoring",
        "owner": "team-payments",
        "exception_owner": "team-payments",
    }
    assert sample.value == served.exception_expires.timestamp()


def test_every_panel_expression_parses(tmp_path: Path) -> None:
    promtool = tool("promtool", "prometheus")
    found = targets()
    assert len(found) >= 15
    for target in found:
        assert metric_names(target.promql), f"{target.panel} {target.ref} reads no metric"
        assert "$" not in target.promql, (
            f"{target.panel} {target.ref}: a Grafana variable the test does not set"
        )
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:target_{index}", "expr": target.promql} for index, target in enumerate(found)
    ]}]}  # fmt: skip
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(found)} rules found" in result.stdout


def test_the_metric_name_reader_skips_functions_labels_strings_and_durations() -> None:
    expr = (
        'sum by (policy) (rate(x_total{a="b", c=~"d|e"}[5m] offset 1d)) / on (job) group_left (z) y'
        ' > 3e-2 and 1e5 < w unless vector(0) or label_replace(v, "dst", "$1", "src", "(.*)") > bool 1'
    )
    assert metric_names(expr) == {"x_total", "y", "w", "v"}
