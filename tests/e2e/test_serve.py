"""`authz serve` as a user runs it: a subprocess on a free port, on the grpcio
transport (with reflection, and the multiprocessing workers); what every
transport must do is in test_transports.py."""

import io
import json
import shutil
import signal
import subprocess
import sys
from contextlib import AbstractContextManager, redirect_stdout
from pathlib import Path

import grpc
import pytest

from authz import EgressRequest
from authz.cli import main as authz_main
from authz.ext_authz.server import SERVICE_NAME
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest, CheckResponse
from authz.policy import load_paths
from authz.policy.model import TestCase as PolicyTestCase
from authz.policy.testcases import request_for
from authz.testing import check_request
from tests.e2e.conftest import EXAMPLES, Served, free_port, wait_serving
from tests.e2e.conftest import authz_serve as _authz_serve


def authz_serve(*args: str) -> AbstractContextManager[Served]:
    return _authz_serve(*args, "--transport", "grpcio")


GITHUB_TLS = EgressRequest("spiffe://prod.example.org/ns/ci/sa/ci-runner", sni="github.com", port=443)


def _check_stub(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        f"/{SERVICE_NAME}/Check",
        request_serializer=CheckRequest.SerializeToString,
        response_deserializer=CheckResponse.FromString,
    )


def _explain(case: PolicyTestCase) -> dict[str, object]:
    """`authz explain --json` for a policy test case."""
    args = ["explain", str(EXAMPLES), "--json", "--host", case.destination.host or case.destination.sni or ""]
    if case.identity is not None:
        args += ["--identity", case.identity]
    for flag, value in (
        ("--port", case.destination.port),
        ("--sni", case.destination.sni if case.destination.host else None),
        ("--scheme", case.destination.scheme),
        ("--method", case.http.method if case.http else None),
        ("--path", case.http.path if case.http else None),
        ("--zone", case.zone),
    ):
        if value is not None:
            args += [flag, str(value)]
    out = io.StringIO()
    with redirect_stdout(out):
        assert authz_main(args) == 0
    record: dict[str, object] = json.loads(out.getvalue())
    return record


def test_serve_answers_as_explain_does_for_every_example_case() -> None:
    port = free_port()
    with authz_serve("--policy", str(EXAMPLES), "--listen", f"127.0.0.1:{port}") as served:
        wait_serving(f"127.0.0.1:{port}")
        cases = [
            case
            for loaded in load_paths([EXAMPLES]).tests
            for case in loaded.model.spec.cases
            if case.at is None
        ]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = _check_stub(channel)
            for case in cases:
                explained = _explain(case)
                response = check(check_request(request_for(case)), timeout=5)
                metadata = dict(response.dynamic_metadata)
                assert (response.status.code == 0) is explained["allowed"], case.name
                for key in ("verdict", "reason", "policy", "rule", "mode", "policy_version", "destination"):
                    assert metadata.get(key) == explained[key], (case.name, key)
        code, stderr = served.stop()
    assert code == 0, stderr
    assert "stopped" in stderr


def test_serve_on_a_unix_socket(tmp_path: Path) -> None:
    target = f"unix:{tmp_path / 'authz.sock'}"
    with authz_serve("--policy", str(EXAMPLES), "--listen", target) as served:
        wait_serving(target)
        with grpc.insecure_channel(target) as channel:
            response = _check_stub(channel)(check_request(GITHUB_TLS), timeout=5)
        assert dict(response.dynamic_metadata)["rule"] == "github"
        assert served.stop()[0] == 0


def test_two_workers_share_the_port_and_stop_together() -> None:
    port = free_port()
    with authz_serve("--policy", str(EXAMPLES), "--listen", f"127.0.0.1:{port}", "--workers", "2") as served:
        served.wait_for("all 2 workers serving")
        for _ in range(40):  # new connections land on either worker
            with grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as channel:
                response = _check_stub(channel)(check_request(GITHUB_TLS), timeout=5)
                assert response.status.code == 0
        code, stderr = served.stop()
    assert code == 0, stderr
    workers = {line.split("[")[1].split("]")[0] for line in stderr.splitlines() if "serving policy" in line}
    assert len(workers) == 2, stderr
    stopped = {line.split("[")[1].split("]")[0] for line in stderr.splitlines() if line.endswith(": stopped")}
    assert workers < stopped, stderr  # each worker drained and stopped, and the parent after them


def test_bad_policy_exits_2_with_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("apiVersion: egress-authz/v1\nkind: EgressPolicy\nmetadata: {name: x}\n")
    for workers in ("1", "2"):
        with authz_serve(
            "--policy", str(tmp_path), "--listen", f"127.0.0.1:{free_port()}", "--workers", workers
        ) as served:
            code, stderr = served.wait()
        assert code == 2, stderr
        assert f"{tmp_path / 'p.yaml'}:3: metadata.owner: missing required key 'owner'" in stderr


@pytest.mark.parametrize("args", [["--workers", "0"], ["--listen", "unix:/tmp/x.sock", "--workers", "2"]])
def test_bad_arguments_are_refused(args: list[str]) -> None:
    with authz_serve("--policy", str(EXAMPLES), *args) as served:
        code, stderr = served.wait()
    assert code != 0
    assert "workers" in stderr


def test_metrics_endpoint_and_decision_log(tmp_path: Path) -> None:
    import json
    import re
    import time
    import urllib.request

    port, metrics_port = free_port(), free_port()
    decisions = tmp_path / "decisions.jsonl"
    args = ["--policy", str(EXAMPLES), "--listen", f"127.0.0.1:{port}", "--metrics-port", str(metrics_port)]
    with authz_serve(*args, "--decision-log", str(decisions)) as served:
        wait_serving(f"127.0.0.1:{port}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = _check_stub(channel)
            check(check_request(GITHUB_TLS), timeout=5)
            check(check_request(GITHUB_TLS._replace(sni="pastebin.com")), timeout=5)
        deadline = time.monotonic() + 5
        counted: dict[tuple[str, str], str] = {}
        while (
            len(counted) < 2 and time.monotonic() < deadline
        ):  # counted by the telemetry thread, within 20 ms
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
                exposition = reply.read().decode()
            counted = {}
            for line in exposition.splitlines():
                if line.startswith("egress_authz_decisions_total{"):
                    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                    counted[(labels["reason"], labels["verdict"])] = line.rsplit(" ", 1)[1]
        assert served.stop()[0] == 0
    assert counted == {("ALLOWED_BY_RULE", "allow"): "1.0", ("NO_MATCHING_RULE", "deny"): "1.0"}
    assert "egress_authz_identity_coverage" in exposition
    assert "egress_authz_check_duration_seconds_count" in exposition
    deadline = time.monotonic() + 5
    while decisions.read_text().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    records = [json.loads(line) for line in decisions.read_text().splitlines()]
    assert [(r["destination"], r["verdict"], r["first_seen"]) for r in records] == [
        ("github.com:443", "allow", True),
        ("pastebin.com:443", "deny", True),
    ]


@pytest.mark.parametrize("moment", ["starting 2 workers", "serving policy"])
def test_a_stop_while_workers_start_is_clean(moment: str) -> None:
    """SIGTERM forwarded to a worker still importing or loading stops it; that is not a failure."""
    port = free_port()
    with authz_serve("--policy", str(EXAMPLES), "--listen", f"127.0.0.1:{port}", "--workers", "2") as served:
        served.wait_for(moment)
        code, stderr = served.stop()
    assert code == 0, stderr
    assert "exited" not in stderr


def test_a_zone_in_dry_run_relaxes_the_allowlist_and_keeps_the_guards() -> None:
    port = free_port()
    unknown = EgressRequest("spiffe://prod.example.org/ns/x/sa/new-service", sni="github.com", port=443)
    metadata = EgressRequest(GITHUB_TLS.identity, "169.254.169.254", 80, method="GET", path="/")
    with authz_serve(
        "--policy", str(EXAMPLES), "--listen", f"127.0.0.1:{port}", "--mode", "dry-run"
    ) as served:
        wait_serving(f"127.0.0.1:{port}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = _check_stub(channel)
            relaxed = check(check_request(unknown), timeout=5)
            guarded = check(check_request(metadata), timeout=5)
        assert served.stop()[0] == 0
    assert relaxed.status.code == 0
    assert (dict(relaxed.dynamic_metadata)["reason"], dict(relaxed.dynamic_metadata)["mode"]) == (
        "DRY_RUN",
        "dry-run",
    )
    assert dict(relaxed.dynamic_metadata)["would_deny"] is True
    assert guarded.status.code != 0
    assert dict(guarded.dynamic_metadata)["reason"] == "METADATA_ENDPOINT"


def test_sighup_rereads_the_policy(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "policies")
    port = free_port()
    args = ("--policy", str(tmp_path / "policies"), "--listen", f"127.0.0.1:{port}", "--no-watch")
    with authz_serve(*args) as served:
        wait_serving(f"127.0.0.1:{port}")
        ci = tmp_path / "policies" / "ci-runner.yaml"
        ci.write_text(ci.read_text().replace("hosts: [github.com, ", "hosts: ["))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = _check_stub(channel)
            assert check(check_request(GITHUB_TLS), timeout=5).status.code == 0  # not watched: unchanged
            served.process.send_signal(signal.SIGHUP)
            served.wait_for("policy reloaded (change)")
            assert (
                dict(check(check_request(GITHUB_TLS), timeout=5).dynamic_metadata)["reason"]
                == "NO_MATCHING_RULE"
            )
        assert served.stop()[0] == 0


def test_authz_health_exits_0_only_while_serving(tmp_path: Path) -> None:
    port = free_port()
    health = [sys.executable, "-m", "authz", "health", "--target", f"127.0.0.1:{port}", "--timeout", "1"]
    assert subprocess.run(health, capture_output=True, check=False).returncode == 1  # nothing listens
    with authz_serve("--policy", str(EXAMPLES), "--listen", f"127.0.0.1:{port}") as served:
        wait_serving(f"127.0.0.1:{port}")
        assert subprocess.run(health, capture_output=True, check=False).returncode == 0
        assert served.stop()[0] == 0


def test_a_second_server_on_a_taken_port_fails_clearly_and_the_first_keeps_its_calls() -> None:
    """No SO_REUSEPORT for a lone server: a stray second one cannot split its calls."""
    port = free_port()
    with authz_serve("--policy", str(EXAMPLES), "--listen", f"127.0.0.1:{port}") as first:
        wait_serving(f"127.0.0.1:{port}")
        second = subprocess.run(
            [sys.executable, "-m", "authz", "serve", "--policy", str(EXAMPLES), "--listen", f"127.0.0.1:{port}",
             "--transport", "grpcio"],
            check=False, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in second.stderr
        assert "Traceback" not in second.stderr
        code, _ = first.stop()
    assert code == 0
