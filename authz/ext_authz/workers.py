"""``authz serve``: one process, or ``--workers N`` processes sharing one
TCP port (SO_REUSEPORT), and the parent that starts them, says when all of
them serve, forwards SIGTERM/SIGINT, and reports how they ended.

A worker stopped by the parent's own forwarded signal before it served (it
was still importing or loading) stopped cleanly: nothing was in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Sequence
from importlib.util import find_spec
from multiprocessing.queues import Queue
from typing import NoReturn

from authz.ext_authz.server import EXIT_BAD_POLICY, ServeConfig, serve
from authz.policy import PolicyError, load_policy

__all__ = ["run"]

log = logging.getLogger("authz.server")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_READY_WAIT_SECONDS = 120.0


def configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
    )


def run(config: ServeConfig) -> int:
    """``authz serve``: the exit status (0, 1 when a worker failed, 2 for a bad policy or address)."""
    configure_logging()
    if config.workers <= 1 and config.transport == "grpcio":
        return asyncio.run(serve(config))
    if config.workers > 1 and config.listen.startswith("unix:"):
        log.error("--workers needs a TCP address to share (SO_REUSEPORT), not a Unix socket")
        return EXIT_BAD_POLICY
    try:  # fail once, here, rather than once per worker
        load_policy(list(config.policy_paths), config.compile_options())
    except PolicyError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return EXIT_BAD_POLICY
    if config.transport == "pyvoy":
        if find_spec("pyvoy") is None:
            log.error("--transport pyvoy: pyvoy is not installed (it ships for Linux x86_64 and aarch64);"
                      " use --transport grpcio")  # fmt: skip
            return EXIT_BAD_POLICY
        from authz.ext_authz import pyvoy_transport  # imports pyvoy and Envoy's wheel: only when asked for

        return pyvoy_transport.run(config, [_for_worker(config, i) for i in range(config.workers)])
    return _supervise(config)


def _supervise(config: ServeConfig) -> int:
    context = multiprocessing.get_context("spawn")
    ready: Queue[int] = context.Queue()
    stopping = threading.Event()
    workers = [
        context.Process(target=_worker, args=(_for_worker(config, i), i, ready), name=f"authz-worker-{i}")
        for i in range(config.workers)
    ]

    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        stopping.set()
        _signal_all(workers, signum)

    for signum in _STOP_SIGNALS:
        signal.signal(signum, forward)
    log.info("starting %d workers on %s", len(workers), config.listen)
    for process in workers:
        if stopping.is_set():
            break
        process.start()
    if received:  # a signal that came while a worker was being started missed it
        _signal_all(workers, received[-1])
    threading.Thread(target=_announce, args=(ready, workers, stopping), daemon=True).start()
    failed = []
    for index, process in enumerate(workers):
        if process.pid is None:
            continue  # stopped before it was started
        process.join()
        code = process.exitcode
        if code != 0 and not (stopping.is_set() and code is not None and -code in _STOP_SIGNALS):
            failed.append(f"worker {index} (pid {process.pid}) exited {code}")
    for line in failed:
        log.error("%s", line)
    return 1 if failed else 0


def _signal_all(workers: Sequence[multiprocessing.process.BaseProcess], signum: int) -> None:
    for process in workers:
        if process.pid is not None and process.is_alive():
            os.kill(process.pid, signum)


def _announce(
    ready: Queue[int], workers: Sequence[multiprocessing.process.BaseProcess], stopping: threading.Event
) -> None:
    """Log once every worker serves: the moment the port is fully served."""
    pending = set(range(len(workers)))
    while pending and not stopping.is_set():
        try:
            pending.discard(ready.get(timeout=_READY_WAIT_SECONDS))
        except queue.Empty:
            log.warning("workers %s are not serving yet", sorted(pending))
    if not pending:
        log.info("all %d workers serving (pids %s)", len(workers), ", ".join(str(w.pid) for w in workers))


def _worker(config: ServeConfig, index: int, ready: Queue[int]) -> NoReturn:
    configure_logging()
    raise SystemExit(asyncio.run(serve(config, on_serving=lambda: ready.put(index))))


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
