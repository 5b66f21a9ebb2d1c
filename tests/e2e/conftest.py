"""Real processes on 127.0.0.1 (or a Unix socket), for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from authz.lab import authz_serving, free_port

__all__ = ["EXAMPLES", "ROOT", "authz_serve", "free_port", "wait_serving"]

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "policies"


def wait_serving(target: str, timeout: float = 20.0) -> None:
    """Poll gRPC health until SERVING (the policy is loaded)."""
    deadline = time.monotonic() + timeout
    while not authz_serving(target):
        if time.monotonic() > deadline:
            raise TimeoutError(f"authz at {target} did not become SERVING")
        time.sleep(0.05)


@contextlib.contextmanager
def authz_serve(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``authz serve ARGS``; stopped with SIGTERM (and killed if it hangs)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "authz", "serve", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
