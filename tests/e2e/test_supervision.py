"""``authz serve --workers N`` on each transport: a worker that dies is
restarted while the others keep serving; a crash loop ends authz with exit
1; a stop during a restart is clean. Workers are killed with SIGKILL, as the
kernel's OOM killer would; every wait is on a log line or a process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import grpc
import pytest

from authz import EgressRequest
from authz.ext_authz.check import SERVICE_NAME
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest, CheckResponse
from authz.testing import check_request
from tests.e2e.conftest import EXAMPLES, Served, authz_serve, free_port

GITHUB = EgressRequest("spiffe://prod.example.org/ns/ci/sa/ci-runner", sni="github.com", port=443)
TRANSPORTS = ["grpcio", "pyvoy"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    copy = tmp_path / "policies"
    shutil.copytree(EXAMPLES, copy)
    return copy


def _arguments(transport: str, policies: Path, target: str, *args: str) -> list[str]:
    return ["--policy", str(policies), "--listen", target, "--transport", transport, *args]


def _pids(served: Served, text: str) -> list[int]:
    """The numbers after ``text`` in the last stderr line with it."""
    line = [line for line in served.lines if text in line][-1]
    return [int(pid) for pid in re.findall(r"\d+", line.split(text, 1)[1])]


def _all_serving(served: Served, workers: int) -> list[int]:
    served.wait_for(f"all {workers} workers serving")
    return _pids(served, "workers serving (pids")


def _checks_answered(target: str, count: int = 10) -> None:
    """``count`` checks, each on a new connection (so each lands on any worker
    listening now), each allowed."""
    for _ in range(count):
        with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            check = channel.unary_unary(
                f"/{SERVICE_NAME}/Check",
                request_serializer=CheckRequest.SerializeToString,
                response_deserializer=CheckResponse.FromString,
            )
            assert check(check_request(GITHUB), timeout=10).status.code == 0


def _gone(pid: int, timeout: float = 20.0) -> bool:
    """Whether process ``pid`` has ended (a zombie counts: it no longer runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_killed_worker_is_restarted_while_the_other_serves(transport: str, policies: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    with authz_serve(*_arguments(transport, policies, target, "--workers", "2")) as served:
        first, second = _all_serving(served, 2)
        os.kill(first, signal.SIGKILL)
        served.wait_for(f"(pid {first}) killed by SIGKILL; restarting it")
        assert _gone(first)  # and its files closed, its listening socket with them
        _checks_answered(target)  # the other worker takes every connection
        served.wait_for("serving again")
        (replacement,) = _pids(served, "serving again (pid")
        assert replacement not in (first, second)
        os.kill(second, signal.SIGKILL)  # now only the new worker (or the second's own new one) is left
        served.wait_for(f"(pid {second}) killed by SIGKILL; restarting it")
        assert _gone(second)
        _checks_answered(target)
        served.wait_for("serving again", count=2)
        code, stderr = served.stop()
    assert code == 0, stderr
    assert stderr.count("restarted (pid") == 2, stderr
    assert "crash loop" not in stderr


def test_a_worker_that_cannot_start_again_ends_in_a_crash_loop_exit_1(transport: str, policies: Path) -> None:
    """A bad policy is rejected by the running workers; a worker restarted then cannot
    load it, and is not restarted forever: past --max-restarts, authz stops."""
    target = f"127.0.0.1:{free_port()}"
    with authz_serve(
        *_arguments(transport, policies, target, "--workers", "2", "--max-restarts", "2")
    ) as served:
        first, second = _all_serving(served, 2)
        (policies / "broken.yaml").write_text("apiVersion: egress-authz/v1\nkind: EgressPolicy\n")
        served.wait_for("policy change rejected", count=2)
        _checks_answered(target, 2)  # the last good policy still serves
        os.kill(first, signal.SIGKILL)
        code, stderr = served.wait(timeout=60)
    assert code == 1, stderr
    assert "a crash loop; stopping" in stderr
    assert stderr.count("restarted (pid") == 2, stderr
    assert "broken.yaml" in stderr  # each restarted worker said why it could not start
    assert _gone(second)


@pytest.mark.parametrize("moment", ["restarting it in", "restarted (pid"])
def test_a_stop_during_a_restart_is_clean(transport: str, policies: Path, moment: str) -> None:
    target = f"127.0.0.1:{free_port()}"
    with authz_serve(*_arguments(transport, policies, target, "--workers", "2")) as served:
        first, second = _all_serving(served, 2)
        os.kill(first, signal.SIGKILL)
        served.wait_for(moment)
        code, stderr = served.stop()
    assert code == 0, stderr
    assert "crash loop" not in stderr
    restarted = [int(pid) for pid in re.findall(r"restarted \(pid (\d+)", stderr)]
    for pid in (second, *restarted):
        assert _gone(pid), f"worker {pid} outlived authz serve"


def test_an_address_in_use_is_refused_once_not_per_worker(transport: str, policies: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # no SO_REUSEPORT: nobody else may bind the port
        taken.listen()
        port = taken.getsockname()[1]
        with authz_serve(*_arguments(transport, policies, f"127.0.0.1:{port}", "--workers", "2")) as served:
            code, stderr = served.wait()
    assert code == 2, stderr
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
    assert " restarted (pid" not in stderr  # the supervisor's words for a worker it restarted
    assert "restarting it in" not in stderr


def test_sighup_to_the_parent_rereads_in_every_worker(transport: str, policies: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    with authz_serve(*_arguments(transport, policies, target, "--workers", "2", "--no-watch")) as served:
        _all_serving(served, 2)
        ci = policies / "ci-runner.yaml"
        ci.write_text(ci.read_text().replace("hosts: [github.com, ", "hosts: ["))
        served.process.send_signal(signal.SIGHUP)
        served.wait_for("policy reloaded", count=2)
        code, stderr = served.stop()
    assert code == 0, stderr


@pytest.mark.parametrize("moment", ["starting 2", "serving policy"])
def test_a_stop_while_workers_start_is_clean(transport: str, policies: Path, moment: str) -> None:
    """The parent logs "starting" once a stop is handled: from then on SIGTERM drains, whenever it comes."""
    target = f"127.0.0.1:{free_port()}"
    with authz_serve(*_arguments(transport, policies, target, "--workers", "2")) as served:
        served.wait_for(moment)
        code, stderr = served.stop()
    assert code == 0, stderr
    assert "exited" not in stderr
    assert "killed" not in stderr


def test_a_pyvoy_worker_leaves_no_shared_memory_behind(policies: Path) -> None:
    """Envoy's hot restart (which the parent never uses: it starts a new Envoy) kept a
    file in /dev/shm for every worker ever started, clean exits included."""
    target = f"127.0.0.1:{free_port()}"
    with authz_serve(*_arguments("pyvoy", policies, target, "--workers", "2")) as served:
        for pid in _all_serving(served, 2):
            assert "envoy_shared_memory" not in Path(f"/proc/{pid}/maps").read_text()
        assert served.stop()[0] == 0
