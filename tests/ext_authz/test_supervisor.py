"""The supervisor's rules, with small real processes as workers: what is
restarted, how fast, and when it gives up. (Both transports' workers under
it, with Envoy and grpc.aio: tests/e2e/test_supervision.py.)"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from authz.ext_authz.supervisor import RestartPolicy, Supervisor, describe_exit


class ScriptWorker:
    """A Python process running ``script``; it serves once it has written its ``serving`` file."""

    def __init__(self, directory: Path, script: str) -> None:
        self.directory, self.script = directory, script
        self.process: subprocess.Popen[bytes] | None = None
        self._pidfd: int | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, "-c", self.script], cwd=self.directory)
        self._pidfd = os.pidfd_open(self.process.pid)

    def sentinel(self) -> int:
        assert self._pidfd is not None
        return self._pidfd

    def poll(self) -> int | None:
        assert self.process is not None
        return self.process.poll()

    def serving(self) -> bool:
        return (self.directory / f"serving.{self.pid}").exists()

    def reload(self) -> None:
        (self.directory / f"reloaded.{self.pid}").touch()

    def stop(self, grace: float) -> None:
        assert self.process is not None
        self.process.terminate()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()

    def close(self) -> None:
        assert self._pidfd is not None
        os.close(self._pidfd)


SERVE_THEN_DIE = "import os, pathlib; pathlib.Path(f'serving.{os.getpid()}').touch(); raise SystemExit(3)"
FAIL_AT_START = "raise SystemExit(2)"
FAST = RestartPolicy(max_restarts=3, window=60, first_delay=0.01, max_delay=0.04)


def test_the_backoff_doubles_up_to_its_ceiling() -> None:
    policy = RestartPolicy(first_delay=0.25, max_delay=4)
    assert [policy.delay(n) for n in range(1, 8)] == [0.25, 0.5, 1, 2, 4, 4, 4]


def test_exits_are_described_by_status_or_signal() -> None:
    assert (describe_exit(2), describe_exit(-9), describe_exit(-15)) == (
        "exited 2",
        "killed by SIGKILL",
        "killed by SIGTERM",
    )


def test_a_worker_failing_before_it_first_serves_is_not_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    started: list[ScriptWorker] = []

    def make(index: int) -> ScriptWorker:
        script = FAIL_AT_START if index == 1 else "import time; time.sleep(60)"
        started.append(ScriptWorker(tmp_path / str(index), script))
        return started[-1]

    with caplog.at_level(logging.INFO, "authz.server"):
        status = Supervisor(make, 2, grace=1, policy=FAST, what="2 workers").run()
    assert status == 2  # the worker's own status: a bad policy or address
    assert len(started) == 2  # nothing restarted
    assert "worker 1 (pid" in caplog.text
    assert "exited 2 before it served; not restarting it" in caplog.text


def test_deaths_past_the_bound_within_the_window_end_in_exit_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    started: list[ScriptWorker] = []

    def make(index: int) -> ScriptWorker:
        started.append(ScriptWorker(tmp_path / str(len(started)), SERVE_THEN_DIE))
        return started[-1]

    with caplog.at_level(logging.INFO, "authz.server"):
        status = Supervisor(make, 1, grace=1, policy=FAST, what="1 worker").run()
    assert status == 1
    assert len(started) == 1 + FAST.max_restarts
    delays = [
        line.split("restarting it in ")[1].split(" s")[0] for line in caplog.messages if "restarting" in line
    ]
    assert delays == ["0.01", "0.02", "0.04"]
    assert "4 deaths within 60 s, a crash loop" in caplog.text


def test_a_stop_cancels_a_pending_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM while a restart waits out its backoff: no restart, a clean exit."""
    started: list[ScriptWorker] = []
    slow = RestartPolicy(first_delay=30, max_delay=30)

    def make(index: int) -> ScriptWorker:
        script = SERVE_THEN_DIE if index == 0 else "import time; time.sleep(60)"
        started.append(ScriptWorker(tmp_path / str(len(started)), script))
        return started[-1]

    class Stopper(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "restarting it in" in record.getMessage():
                os.kill(os.getpid(), signal.SIGTERM)  # to the supervisor, as an orchestrator would

    stopper = Stopper()
    logging.getLogger("authz.server").addHandler(stopper)
    try:
        with caplog.at_level(logging.INFO, "authz.server"):
            status = Supervisor(make, 2, grace=1, policy=slow, what="2 workers").run()
    finally:
        logging.getLogger("authz.server").removeHandler(stopper)
    assert status == 0, caplog.text
    assert len(started) == 2
    assert "restarted" not in caplog.text
    assert all(worker.poll() is not None for worker in started)


WAIT_FOR_GO = (
    "import os, pathlib, time\n"
    "for _ in range(3000):\n"
    "    if pathlib.Path('go').exists(): break\n"
    "    time.sleep(0.01)\n"
    "pathlib.Path(f'serving.{os.getpid()}').touch()\n"
    "time.sleep(60)\n"
)


def test_a_sighup_while_a_worker_starts_reaches_it_once_it_serves(tmp_path: Path) -> None:
    """It may have read its files before the change the SIGHUP is about."""
    directory = tmp_path / "0"
    supervisor = Supervisor(
        lambda index: ScriptWorker(directory, WAIT_FOR_GO), 1, grace=1, policy=FAST, what="1 worker"
    )

    def operator() -> None:
        deadline = time.monotonic() + 30
        try:
            while supervisor.slots[0].worker is None and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGHUP)  # while the worker waits for "go": it does not serve
            while not supervisor.slots[0].reload_pending and time.monotonic() < deadline:
                time.sleep(0.01)
            (directory / "go").touch()
            while not list(directory.glob("reloaded.*")) and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # whatever happened: the supervisor stops

    thread = threading.Thread(target=operator)
    thread.start()
    status = supervisor.run()
    thread.join()
    assert status == 0
    assert [path.name for path in directory.glob("reloaded.*")] == [f"reloaded.{started_pid(directory)}"]
    assert not supervisor.slots[0].reload_pending


def started_pid(directory: Path) -> int:
    (serving,) = directory.glob("serving.*")
    return int(serving.suffix[1:])
