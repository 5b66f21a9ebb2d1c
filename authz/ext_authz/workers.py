"""``authz serve``: one process, or ``--workers N`` processes sharing one
TCP port (SO_REUSEPORT) under a parent (``supervisor``) that restarts one
that dies. The policy and the address are checked once, here, before any
worker starts: a worker that would fail on them is never started at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from importlib.util import find_spec
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import NoReturn

from authz.ext_authz.server import EXIT_BAD_POLICY, ServeConfig, serve
from authz.ext_authz.supervisor import RestartPolicy, Supervisor
from authz.policy import PolicyError, load_policy

__all__ = ["run"]

log = logging.getLogger("authz.server")


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    )


def run(config: ServeConfig) -> int:
    """``authz serve``: the exit status (0; 1 when workers failed or crashed in a loop;
    2 for a bad policy or address)."""
    configure_logging()
    if config.state_store is None:
        log.info("no --state-store: each process judges first sightings alone; after a restart, every pair"
                 " it sees is reported first seen again")  # fmt: skip
    if config.workers <= 1 and config.transport == "grpcio":
        return asyncio.run(serve(config))
    if config.workers > 1 and config.listen.startswith("unix:"):
        log.error("--workers needs a TCP address to share (SO_REUSEPORT), not a Unix socket")
        return EXIT_BAD_POLICY
    sets = [("", config.policy_paths, config.compile_options())]
    if config.shadow_policy_paths:
        sets.append(("the shadow policy (--shadow-policy)", config.shadow_policy_paths,
                     config.shadow_compile_options()))  # fmt: skip
    for what, paths, options in sets:
        try:  # fail once, here, rather than once per worker
            load_policy(list(paths), options)
        except PolicyError as exc:
            if what:
                log.error("%s cannot be loaded:", what)
            for problem in exc.problems:
                log.error("%s", problem)
            return EXIT_BAD_POLICY
    unusable = _cannot_listen(config.listen)
    if unusable is not None:
        log.error("cannot listen on %s: %s", config.listen, unusable)
        return EXIT_BAD_POLICY
    if config.transport == "pyvoy":
        if find_spec("pyvoy") is None:
            log.error("--transport pyvoy: pyvoy is not installed (it ships for Linux x86_64 and aarch64);"
                      " use --transport grpcio")  # fmt: skip
            return EXIT_BAD_POLICY
        from authz.ext_authz import pyvoy_transport  # imports pyvoy and Envoy's wheel: only when asked for

        workers = [_for_worker(config, i) for i in range(config.workers)]
        return pyvoy_transport.run(config, workers, _restart_policy(config))
    return _supervise(config)


def _restart_policy(config: ServeConfig) -> RestartPolicy:
    return RestartPolicy(max_restarts=config.max_restarts, window=config.restart_window)


def _cannot_listen(listen: str) -> str | None:
    """Why the workers could not listen on a TCP ``listen`` (a port another
    process holds without SO_REUSEPORT, an address not on this host), or None."""
    if listen.startswith("unix:"):
        return None
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind((host, int(port)))
    except (OSError, ValueError) as error:
        return str(error)
    return None


def _supervise(config: ServeConfig) -> int:
    context = get_context("spawn")
    configs = [_for_worker(config, i) for i in range(config.workers)]
    supervisor = Supervisor(
        lambda index: _Process(context, configs[index], index),
        config.workers,
        grace=config.grace_seconds,
        policy=_restart_policy(config),
        what=f"{config.workers} workers on {config.listen}",
    )
    return supervisor.run()


class _Process:
    """A grpc.aio worker: a spawned process that says through a pipe when it serves."""

    def __init__(self, context: SpawnContext, config: ServeConfig, index: int) -> None:
        self.context, self.config, self.index = context, config, index
        self.process: SpawnProcess | None = None
        self._ready: Connection | None = None
        self._serving = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        reader, writer = self.context.Pipe(duplex=False)
        self.process = self.context.Process(
            target=_worker, args=(self.config, writer), name=f"authz-worker-{self.index}"
        )
        try:
            self.process.start()
        finally:
            writer.close()  # the worker's end: once it has gone, the reader sees the end of the pipe
        self._ready = reader

    def sentinel(self) -> int:
        assert self.process is not None
        return self.process.sentinel

    def poll(self) -> int | None:
        assert self.process is not None
        return self.process.exitcode

    def serving(self) -> bool:
        if not self._serving and self._ready is not None and self._ready.poll():
            with contextlib.suppress(EOFError):  # it ended before serving
                self._serving = bool(self._ready.recv())
        return self._serving

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.pid is not None and self.process.exitcode is None:
            os.kill(self.process.pid, signum)

    def reload(self) -> None:
        self._signal(signal.SIGHUP)

    def stop(self, grace: float) -> None:
        self._signal(signal.SIGTERM)  # its own drain, within its --grace

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def close(self) -> None:
        if self._ready is not None:
            self._ready.close()
        if self.process is not None:
            self.process.close()


def _worker(config: ServeConfig, ready: Connection) -> NoReturn:
    configure_logging()

    def serving() -> None:
        ready.send(True)
        ready.close()

    raise SystemExit(asyncio.run(serve(config, on_serving=serving)))


def _for_worker(config: ServeConfig, index: int) -> ServeConfig:
    """Worker ``index``'s own metrics port and decision log file; it loads
    its policy before it takes connections."""
    metrics_port = config.metrics_port + index if config.metrics_port is not None else None
    decision_log = config.decision_log
    if decision_log not in (None, "-") and index > 0:
        decision_log = f"{decision_log}.worker{index}"
    return dataclasses.replace(
        config, metrics_port=metrics_port, decision_log=decision_log, load_before_listen=True
    )
