"""deploy/monitoring as the tests read it: the alert and recording rules, the
dashboard's expressions, the metric names an expression reads, the real
promtool and amtool, and the PrometheusRule rendered from the rules file
(``python -m tests.monitoring.files > deploy/kubernetes/monitoring/prometheusrule.yaml``,
which ``make monitoring-rules`` runs)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.paths import ROOT

MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "egress-authz.rules.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
ALERTMANAGER = MONITORING / "alertmanager.yaml"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "monitoring" / "prometheusrule.yaml"
UNIT_TESTS = sorted((ROOT / "tests" / "monitoring").glob("*.test.yaml"))
JOB = "egress-authz"  # the scrape job the rules name (compose's job_name, the ServiceMonitor's jobLabel)
# What Grafana puts in place of the dashboard's variables, for promtool to parse an expression.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$policy": ".*"}


def tool(command: str, package: str) -> str:
    """The path of a Debian tool the tests run; skips, naming the package, where it is missing."""
    found = shutil.which(command)
    if found is None:
        pytest.skip(
            f"{command} not found: apt-get install {package} (`make test` installs it when run as root)"
        )
    return found


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def recorded() -> set[str]:
    """The names the recording rules write."""
    return {rule["record"] for rule in rules() if "record" in rule}


@dataclass(frozen=True, slots=True)
class Target:
    panel: str
    ref: str
    expr: str  # as the dashboard has it, with Grafana's variables

    @property
    def promql(self) -> str:
        """The expression as Grafana sends it, its variables given values."""
        text = self.expr
        for variable, value in GRAFANA_VARIABLES.items():
            text = text.replace(variable, value)
        return text


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        if panel["type"] != "row":
            yield panel


def targets() -> list[Target]:
    return [
        Target(panel["title"], target["refId"], target["expr"])
        for panel in panels()
        for target in panel["targets"]
    ]


def variable_metrics() -> set[str]:
    """The metrics the dashboard's variables list values of (``label_values(METRIC, label)``)."""
    found = set()
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            (name,) = re.findall(r"label_values\((\w+),", variable["definition"])
            found.add(name)
    return found


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BRACES = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_OFFSETS = re.compile(r"\boffset\s+-?\w+")
_NAME = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()")
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                       "unless", "offset", "inf", "nan", "Inf", "NaN"})  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: the identifiers left once strings, label
    matchers, ranges, offsets, grouping clauses and calls are set aside (never a label name:
    those only stand inside braces or a grouping clause)."""
    text = _STRINGS.sub('""', expr)
    for pattern in (_GROUPING, _BRACES, _RANGES, _OFFSETS):
        text = pattern.sub(" ", text)
    return {name for name in _NAME.findall(text) if name not in _KEYWORDS}


def read_names() -> dict[str, set[str]]:
    """Each metric name a rule or the dashboard reads, and who reads it."""
    found: dict[str, set[str]] = {}
    for rule in rules():
        for name in metric_names(rule["expr"]):
            found.setdefault(name, set()).add(rule.get("alert") or rule["record"])
    for target in targets():
        for name in metric_names(target.promql):
            found.setdefault(name, set()).add(f"panel {target.panel!r}")
    for name in variable_metrics():
        found.setdefault(name, set()).add("the dashboard's variables")
    return found


def prometheus_rule() -> str:
    """deploy/kubernetes/monitoring/prometheusrule.yaml: the rules file's groups, as they are
    written (comments kept), under a PrometheusRule's spec."""
    text = RULES.read_text()
    body = text[text.index("\ngroups:") + 1 :]
    indented = "".join(f"  {line}" if line.strip() else line for line in body.splitlines(keepends=True))
    return (
        "# Generated by `make monitoring-rules` from deploy/monitoring/egress-authz.rules.yaml: edit that\n"
        "# file, not this one (tests/monitoring/test_rules.py fails when this one is stale).\n"
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: egress-authz\n"
        "spec:\n" + indented
    )


if __name__ == "__main__":
    print(prometheus_rule(), end="")
