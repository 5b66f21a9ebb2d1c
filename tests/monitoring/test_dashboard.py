"""deploy/monitoring/grafana-dashboard.json: the panels the issue lists, each
on the Prometheus the user picks, laid out without overlaps (that every
expression parses and reads exported metrics: test_exported.py)."""

from __future__ import annotations

import re

from tests.monitoring.files import dashboard, panels, targets

TOPICS = {  # a panel title: what it must read
    "Decisions by verdict and reason": r"by \(verdict, reason\)",
    "Top denying policies": r"topk\(10, sum by \(policy, owner\) \(policy:egress_authz_denies:rate5m",
    "First-seen destinations by owner": r"sum by \(owner\) \(policy:egress_authz_first_seen_destinations:new10m\)",
    "Identity coverage": r"egress_authz_identity_coverage",
    "Unknown-destination rate": r'reason="NO_MATCHING_RULE"',
    "Exception uses": r"egress_authz_exception_uses_total",
    "Exception expiries": r"egress_authz_exception_expiry_timestamp_seconds",
    "Check latency": r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(egress_authz_check_duration_seconds_bucket",
    "Policy reloads": r"egress_authz_policy_reloads_total",
    "Shadow disagreements": r"egress_authz_shadow_disagreements_total",
}


def test_the_panels_the_issue_lists_are_there() -> None:
    by_title = {panel["title"]: " ".join(t["expr"] for t in panel["targets"]) for panel in panels()}
    for title, pattern in TOPICS.items():
        assert title in by_title, title
        assert re.search(pattern, by_title[title]), (title, by_title[title])


def test_every_panel_queries_the_chosen_prometheus_and_says_what_it_shows() -> None:
    variables = {variable["name"]: variable for variable in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["policy"]["allValue"] == ".*"  # "All" also matches decisions without a policy
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["description"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)) >= 1, panel["title"]
        assert all(target["datasource"] == panel["datasource"] for target in panel["targets"])
    assert len(targets()) == sum(len(panel["targets"]) for panel in panels())


def test_the_layout_has_unique_ids_and_no_overlaps() -> None:
    every = dashboard()["panels"]
    assert len({panel["id"] for panel in every}) == len(every)
    cells: dict[tuple[int, int], str] = {}
    for panel in every:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]
