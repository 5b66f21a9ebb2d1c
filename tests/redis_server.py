"""The real redis-server (Debian package ``redis-server``) for the state store's
tests: on 127.0.0.1, on a free port, no persistence, started and stopped by a
fixture; ``stop`` and ``start`` again on the same port stand for an outage.
Without the binary the tests that need it skip, naming the package."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.gateway.lab import free_port

__all__ = ["RedisServer", "needs_redis", "redis_server"]

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None,
    reason="redis-server is missing: install the Debian package redis-server (make test does, as root)",
)


class RedisServer:
    """One redis-server process at a time on ``port``; ``url`` for authz."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = free_port() if port is None else port
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket(self) -> Path:
        """Its Unix socket too (``unix://`` URLs)."""
        return self.directory / "redis.sock"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        assert self.process is None or self.process.poll() is not None
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--logfile", str(self.log), "--protected-mode", "yes",
             "--unixsocket", str(self.socket), "--unixsocketperm", "700"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not self.answers():
            assert self.process.poll() is None, f"redis-server exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"redis-server did not answer: {self.log.read_text()[-2000:]}"
            time.sleep(0.02)

    def answers(self) -> bool:
        """PING answered with PONG (over a plain socket: RESP inline commands)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Gone: the port refuses connections once this returns."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)

    def command(self, *args: str) -> str:
        """redis-cli's answer to one command, as text."""
        cli = shutil.which("redis-cli")
        assert cli is not None
        return subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(self.port), "--no-raw", *args],
            check=True, capture_output=True, text=True, timeout=20,
        ).stdout.strip()  # fmt: skip

    def scan(self, pattern: str = "egress-authz:*", db: int = 0) -> list[str]:
        cli = shutil.which("redis-cli")
        assert cli is not None
        out = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(self.port), "-n", str(db), "--raw", "--scan", "--pattern", pattern],
            check=True, capture_output=True, text=True, timeout=20,
        ).stdout  # fmt: skip
        return sorted(line for line in out.splitlines() if line)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip(
            "redis-server is missing: install the Debian package redis-server (make test does, as root)"
        )
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
