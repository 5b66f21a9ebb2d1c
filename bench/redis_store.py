"""A real redis-server for the benchmarks (Debian: apt-get install redis-server):
on 127.0.0.1, a free port, no persistence, stopped on exit."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from authz.gateway.lab import free_port


@contextmanager
def redis_server() -> Iterator[str]:
    """The URL of a redis-server running for the duration."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("this benchmark needs redis-server: apt-get install redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="authz-bench-redis-") as directory:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", directory],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while not _answers(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.kill()
            process.wait(timeout=20)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def command(url: str, *args: str) -> str:
    """redis-cli's answer to one command on the server at ``url``."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise SystemExit("redis-cli missing: apt-get install redis-tools")
    return subprocess.run([cli, "-u", url, *args], check=True, capture_output=True, text=True).stdout.strip()
