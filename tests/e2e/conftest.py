"""Real processes on 127.0.0.1 (or a Unix socket), for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from authz.ext_authz.health import serving
from authz.gateway.lab import free_port
from tests.paths import EXAMPLES, ROOT

__all__ = ["EXAMPLES", "ROOT", "Served", "authz_serve", "free_port", "wait_serving"]


def wait_serving(target: str, timeout: float = 20.0) -> None:
    """Poll gRPC health until SERVING (the policy is loaded)."""
    deadline = time.monotonic() + timeout
    while not serving(target):
        if time.monotonic() > deadline:
            raise TimeoutError(f"authz at {target} did not become SERVING")
        time.sleep(0.05)


class Served:
    """``authz serve`` running, its stderr read line by line as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, count: int = 1, timeout: float = 30.0) -> None:
        """Until ``count`` stderr lines contain ``text``; fails with the log so far."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(text in line for line in self.lines) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (not self._reader.is_alive() and self.process.poll() is not None):
                    raise AssertionError(f"no {count} x {text!r} in authz serve's stderr:\n{self.stderr}")
                self._changed.wait(min(left, 0.5))

    def wait(self, timeout: float = 20.0) -> tuple[int, str]:
        """The exit status and the whole stderr, once the process has ended."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code, self.stderr

    def stop(self) -> tuple[int, str]:
        """SIGTERM, as an orchestrator would; then :meth:`wait`."""
        self.process.send_signal(signal.SIGTERM)
        return self.wait()


@contextlib.contextmanager
def authz_serve(*args: str) -> Iterator[Served]:
    """``authz serve ARGS``; killed at the end if it still runs."""
    process = subprocess.Popen(
        [sys.executable, "-m", "authz", "serve", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield Served(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
