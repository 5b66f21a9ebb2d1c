"""Waiting on processes the tests start: a condition met while the process
runs, or a failure that shows the end of its log."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
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
