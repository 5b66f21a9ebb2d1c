"""bench/inventory.py's log (the benchmark itself is never run as a test):
its records have the decision log's keys, read back as the server's do."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from authz.analysis.access_log import AccessLogs
from authz.analysis.inventory import take_inventory
from authz.analysis.logs import DecisionLogs
from authz.gateway.envoy_config import GatewaySpec, render
from tests.analysis.test_inventory import TRAFFIC
from tests.analysis.traffic import records
from tests.paths import bench_module


def test_the_benchmark_log_has_the_server_s_keys_and_reads_back(tmp_path: Path) -> None:
    log = bench_module("inventory").make_log(tmp_path / "d.jsonl", 20_000)
    first = json.loads(log.read_text().partition("\n")[0])
    # The server's record: decision_record's keys, and the five the recorder adds.
    added = {"trace_id", "span_id", "sampled", "first_seen", "first_seen_source"}
    assert set(first) == set(records(TRAFFIC[:1])[0]) | added
    with DecisionLogs([str(log)]) as logs:
        inventory = take_inventory(logs)
    assert (inventory.records, inventory.malformed) == (20_000, 2)
    reasons = {r for flows in inventory.identities for d in flows.destinations for r in d.reasons}
    assert {"ALLOWED_BY_RULE", "NO_MATCHING_RULE", "DRY_RUN", "METADATA_ENDPOINT", "REVOKED"} <= reasons
    assert any(flows.identity is None for flows in inventory.identities)


def test_the_benchmark_access_log_has_the_rendered_keys_and_joins(tmp_path: Path) -> None:
    bench = bench_module("inventory")
    log = bench.make_log(tmp_path / "d.jsonl", 20_000)
    access = bench.make_access_log(tmp_path / "access.jsonl", log)
    first = json.loads(access.read_text().partition("\n")[0])
    document = yaml.safe_load(render(GatewaySpec(zone="z", authz="127.0.0.1:9191")))
    (http,) = [item for item in document["staticResources"]["listeners"] if item["name"] == "http_egress"]
    rendered = http["filterChains"][0]["filters"][0]["typedConfig"]["accessLog"][0]["typedConfig"][
        "logFormat"
    ]
    assert set(first) == set(rendered["jsonFormat"])
    with DecisionLogs([str(log)]) as logs:
        inventory = take_inventory(logs, access=AccessLogs([str(access)], logs))
    summary = inventory.access
    assert summary is not None
    assert (summary.matched, summary.unmatched, summary.no_decision_id, summary.malformed) == (
        20_000,
        10,
        10,
        2,
    )
    assert summary.unmatched_bytes_out > 0
    assert (summary.decisions, summary.logged) == (20_000, 20_000)
