"""docker-compose.yml's Prometheus, run here as a local process: the real
Prometheus (Debian's `prometheus`) with the compose service's own command and
configuration, the service name `authz` replaced by the real `authz serve` on
127.0.0.1 and the intervals shortened. It scrapes authz, loads every rule
group, and the alerts show: the break-glass exception that closes in two
days fires, routed to its policy's owner."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.gateway.lab import free_port
from tests.monitoring.conftest import Served
from tests.monitoring.files import JOB, rule_groups, tool
from tests.paths import ROOT
from tests.processes import logged_process

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PROMETHEUS = COMPOSE["services"]["prometheus"]


def _mounts() -> dict[str, Path]:
    """Where the service's files are inside its container: path there -> this repository's file."""
    found = {}
    for volume in PROMETHEUS["volumes"]:
        source, target, *_ = volume.split(":")
        assert source.startswith("./"), volume
        found[target] = ROOT / source
    return found


def _local_config(directory: Path, metrics_port: int) -> Path:
    mounts = _mounts()
    (command_config,) = [
        arg.split("=", 1)[1] for arg in PROMETHEUS["command"] if arg.startswith("--config.file=")
    ]
    config = yaml.safe_load(mounts[command_config].read_text())
    assert config["rule_files"]
    assert all(path in mounts for path in config["rule_files"])
    config["rule_files"] = [str(mounts[path]) for path in config["rule_files"]]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    (static,) = job["static_configs"]
    assert static["targets"] == ["authz:9464"]  # authz's --metrics-port in the compose file
    static["targets"] = [f"127.0.0.1:{metrics_port}"]
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    path = directory / "prometheus.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _local_command(config: Path, storage: Path, port: int) -> list[str]:
    replaced = {"--config.file": str(config), "--storage.tsdb.path": str(storage),
                "--web.listen-address": f"127.0.0.1:{port}"}  # fmt: skip
    flags = dict(arg.split("=", 1) for arg in PROMETHEUS["command"])
    assert set(flags) == set(replaced)
    return [tool("prometheus", "prometheus"), *(f"{flag}={value}" for flag, value in replaced.items())]


def _api(port: int, path: str, **query: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read())["data"]


def _until(what: str, found: Callable[[], Any], process: subprocess.Popen[bytes], log: Path) -> Any:
    """Poll until ``found()`` is truthy; fails with Prometheus's log after 60 s or if it exits."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            result = found()
        except OSError:  # not listening yet
            result = None
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"{what}: not seen; Prometheus's log:\n{log.read_text()[-4000:]}")


def test_the_compose_prometheus_scrapes_authz_and_its_alerts_show(served: Served, tmp_path: Path) -> None:
    authz = COMPOSE["services"]["authz"]["command"]
    assert authz[authz.index("--metrics-port") + 1] == "9464"
    assert authz[authz.index("--metrics-bind") + 1] == "0.0.0.0"  # reachable from the prometheus container
    port, log = free_port(), tmp_path / "prometheus.log"
    command = _local_command(_local_config(tmp_path, served.metrics_port), tmp_path / "data", port)
    with logged_process(command, log) as prometheus:
        (target,) = _until("authz as a healthy target", lambda: [
            t for t in _api(port, "targets")["activeTargets"] if t["health"] == "up"
        ], prometheus, log)  # fmt: skip
        assert target["labels"]["job"] == JOB
        groups = _until("every rule evaluated", lambda: [
            group for group in _api(port, "rules")["groups"]
            if all(rule["health"] == "ok" for rule in group["rules"])
        ], prometheus, log)  # fmt: skip
        assert sorted(group["name"] for group in groups) == sorted(group["name"] for group in rule_groups())
        firing = _until("the expiring exception's alert firing", lambda: [
            alert for alert in _api(port, "alerts")["alerts"]
            if alert["labels"]["alertname"] == "EgressAuthzExceptionExpiring" and alert["state"] == "firing"
        ], prometheus, log)  # fmt: skip
        rates = _until("the recorded decision rates", lambda: _api(
            port, "query", query='policy:egress_authz_decisions:rate5m{policy="ci-runner"}'
        )["result"], prometheus, log)  # fmt: skip
    (alert,) = firing
    assert {key: alert["labels"][key] for key in ("policy", "owner", "exception", "severity")} == {
        "policy": "payments-api", "owner": "team-payments", "exception": "backup-fraud-scoring", "severity": "warning",
    }  # fmt: skip
    assert alert["annotations"]["summary"].startswith(
        "Exception backup-fraud-scoring of policy payments-api closes in 1d 23h"
    )
    assert {(r["metric"]["verdict"], r["metric"]["reason"], r["metric"]["owner"]) for r in rates} == {
        ("allow", "ALLOWED_BY_RULE", "team-platform"), ("deny", "NO_MATCHING_RULE", "team-platform"),
    }  # fmt: skip
