"""Waiting on processes the tests start: a condition met while the process
runs, or a failure that shows the end of its log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def listening(port: int) -> bool:
    """Something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_until(
    ready: Callable[[], bool],
    what: str,
    log: Path,
    process: subprocess.Popen[bytes] | None = None,
    timeout: float = 60.0,
) -> None:
    """Wait for ``ready`` (only while ``process`` runs); else fail with ``log``'s end."""
    deadline = time.monotonic() + timeout
    while not ready():
        exited = process is not None and process.poll() is not None
        assert not exited, f"{what}: it exited; {log}:\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"{what}; {log}:\n{log.read_text()[-2000:]}"
        time.sleep(0.1)


@contextmanager
def logged_process(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` in a session of its own, its output in ``log``; the session is stopped on exit
    (SIGTERM, then SIGKILL after 15 s) unless the process has ended by itself."""
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                   start_new_session=True)  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
