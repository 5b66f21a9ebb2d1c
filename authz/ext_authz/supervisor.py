"""The parent of ``authz serve --workers N``, for either transport: it
starts the workers, says when all of them serve, restarts one that dies
unexpectedly while the others keep serving, gives up on a crash loop,
passes SIGHUP on as a reload, and turns SIGTERM/SIGINT into a drain during
which nothing is restarted.

The parent has no metrics endpoint: its log lines are the record of every
death and restart, and its exit status says how it ended:

- 0: stopped by SIGTERM/SIGINT, every worker stopped cleanly (a worker that
  had not served yet stopped cleanly whatever its status: nothing was in flight);
- 2 (or 1): a worker of the first start failed before it served (a bad policy or
  address: restarting it would fail the same way), so all stop; 2 when it exited 2;
- 1: a crash loop, more than ``max_restarts`` unexpected deaths within
  ``window`` seconds (a restarted worker that cannot start counts too); or a
  worker failed while draining, or outlived the grace period by ``STOP_MARGIN``.

A restart waits ``first_delay`` doubled for each death already within the
window, at most ``max_delay``: a loop slows down before it ends.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Protocol

from authz.ext_authz.server import EXIT_BAD_POLICY

__all__ = ["RestartPolicy", "Supervisor", "Worker", "describe_exit"]

log = logging.getLogger("authz.server")
STOP_MARGIN = 10.0  # seconds past the grace period before a worker still running is killed
_STARTING_POLL = 0.1  # seconds between looks at workers that do not serve yet


class Worker(Protocol):
    """One worker process, as the supervisor drives it."""

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def sentinel(self) -> int:
        """A file descriptor that becomes readable once the process has ended."""
        ...

    def poll(self) -> int | None:
        """The exit status once the worker has ended (or failed to start), else None."""
        ...

    def serving(self) -> bool:
        """Whether it has loaded its policy and takes checks."""
        ...

    def reload(self) -> None: ...

    def stop(self, grace: float) -> None:
        """Drain within ``grace`` seconds, then end; returns at once."""
        ...

    def kill(self) -> None: ...

    def close(self) -> None:
        """Release what ``start`` took, once the process has ended."""
        ...


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    max_restarts: int = 5
    window: float = 60.0
    first_delay: float = 0.25
    max_delay: float = 4.0

    def delay(self, recent_deaths: int) -> float:
        return float(min(self.first_delay * 2 ** max(recent_deaths - 1, 0), self.max_delay))


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited {code}"


@dataclass
class _Slot:
    index: int
    worker: Worker | None = None
    served: bool = False  # this slot has served once: a death now is a crash, not a failed start
    serving: bool = False  # its current worker serves
    restart_at: float | None = None
    reload_pending: bool = False  # a SIGHUP came while its worker was still starting


class Supervisor:
    """``run()`` until every worker has ended; ``make(index)`` builds worker ``index`` afresh."""

    def __init__(
        self, make: Callable[[int], Worker], count: int, *, grace: float, policy: RestartPolicy, what: str
    ) -> None:
        """``what`` names the workers in the first log line ("2 workers on 127.0.0.1:9191")."""
        self.make, self.what = make, what
        self.grace = grace
        self.policy = policy
        self.slots = [_Slot(index) for index in range(count)]
        self.status = 0
        self.stopping = False
        self.restarts = 0
        self._stop_deadline = 0.0
        self._deaths: collections.deque[float] = collections.deque()
        self._signals: list[int] = []
        self._all_announced = False

    def run(self) -> int:
        """Serve until stopped; the exit status."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in handled}
        previous_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        log.info("starting %s", self.what)  # once a stop can no longer kill this process unhandled
        try:
            for slot in self.slots:
                if self._stop_requested():  # a stop that came while starting: the rest are not started
                    break
                if not self._start(slot):
                    self.status = 1
                    self._stop()
                    break
            self._loop(wake_read)
        except BaseException:
            for slot in self.slots:  # no worker outlives its parent
                if slot.worker is not None:
                    slot.worker.kill()
            raise
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            os.close(wake_read)
            os.close(wake_write)
        log.info("stopped")
        return self.status

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)  # handled by the loop (the wakeup fd wakes it)

    def _stop_requested(self) -> bool:
        return any(signum != signal.SIGHUP for signum in self._signals)

    def _start(self, slot: _Slot) -> bool:
        """Start the slot's worker afresh; False when it could not be."""
        slot.restart_at = None
        worker = self.make(slot.index)
        try:
            worker.start()
        except Exception:
            log.exception("worker %d could not be started", slot.index)
            return False
        slot.worker, slot.serving, slot.reload_pending = worker, False, False
        return True

    def _loop(self, wake: int) -> None:
        while True:
            for slot in self.slots:
                self._look_at(slot)
            self._handle_signals()
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_at is not None and slot.restart_at <= now and not self.stopping:
                    self.restarts += 1
                    if self._start(slot):
                        log.warning("worker %d restarted (pid %s, restart %d)", slot.index,
                                    slot.worker and slot.worker.pid, self.restarts)  # fmt: skip
                    else:
                        self._died(slot, None, "could not be started")
            live = [slot.worker for slot in self.slots if slot.worker is not None]
            if not live and all(slot.restart_at is None for slot in self.slots):
                return
            if self.stopping and now > self._stop_deadline:
                for worker in live:
                    log.error("worker (pid %s) still running %.0f s past the grace period: killing it",
                              worker.pid, STOP_MARGIN)  # fmt: skip
                    worker.kill()
                self.status = 1
                self._stop_deadline = float("inf")
            wait([worker.sentinel() for worker in live] + [wake], self._timeout(now))
            try:
                while os.read(wake, 512):
                    pass
            except BlockingIOError:
                pass

    def _timeout(self, now: float) -> float:
        timeouts = [1.0]
        if any(slot.worker is not None and not slot.serving for slot in self.slots):
            timeouts.append(_STARTING_POLL)
        timeouts += [slot.restart_at - now for slot in self.slots if slot.restart_at is not None]
        if self.stopping:
            timeouts.append(self._stop_deadline - now)
        return max(0.0, min(timeouts))

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP:
                for slot in self.slots:
                    if slot.worker is not None and slot.serving and not self.stopping:
                        slot.worker.reload()
                    elif slot.worker is not None:  # it may have read the files already: once it serves
                        slot.reload_pending = True
            else:
                self._stop()

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._stop_deadline = time.monotonic() + self.grace + STOP_MARGIN
        for slot in self.slots:
            slot.restart_at = None
            if slot.worker is not None:
                slot.worker.stop(self.grace)

    def _look_at(self, slot: _Slot) -> None:
        worker = slot.worker
        if worker is None:
            return
        code = worker.poll()
        # Asked after poll(): a worker that served and then died before this look served.
        if not slot.serving and worker.serving():
            slot.serving = True
            if code is None:
                self._announce(slot, worker)
                if slot.reload_pending and not self.stopping:
                    worker.reload()
            slot.served, slot.reload_pending = True, False
        if code is None:
            return
        was_serving, pid = slot.serving, worker.pid
        worker.close()
        slot.worker, slot.serving = None, False
        self._ended(slot, pid, code, was_serving)

    def _announce(self, slot: _Slot, worker: Worker) -> None:
        if slot.served:
            log.warning("worker %d serving again (pid %s)", slot.index, worker.pid)
        slot.served = True
        if not self._all_announced and all(s.serving for s in self.slots):
            self._all_announced = True
            pids = ", ".join(str(s.worker.pid) for s in self.slots if s.worker is not None)
            log.info("all %d workers serving (pids %s)", len(self.slots), pids)

    def _ended(self, slot: _Slot, pid: int | None, code: int, was_serving: bool) -> None:
        how = describe_exit(code)
        if self.stopping:
            clean = code == 0 or -code in (signal.SIGTERM, signal.SIGINT) or not was_serving
            if not clean:
                log.error("worker %d (pid %s) %s while stopping", slot.index, pid, how)
                self.status = 1
            return
        if not slot.served:
            log.error(
                "worker %d (pid %s) %s before it served; not restarting it: stopping", slot.index, pid, how
            )
            self.status = EXIT_BAD_POLICY if code == EXIT_BAD_POLICY else 1
            self._stop()
            return
        self._died(slot, pid, how)

    def _died(self, slot: _Slot, pid: int | None, how: str) -> None:
        """An unexpected death: a restart after a backoff, or the end of a crash loop."""
        now = time.monotonic()
        deaths = self._deaths
        deaths.append(now)
        while deaths and deaths[0] < now - self.policy.window:
            deaths.popleft()
        bound = f"more than {self.policy.max_restarts} within {self.policy.window:g} s ends authz"
        if len(deaths) > self.policy.max_restarts:
            log.error("worker %d (pid %s) %s: %d deaths within %g s, a crash loop; stopping (%s)",
                      slot.index, pid, how, len(deaths), self.policy.window, bound)  # fmt: skip
            self.status = 1
            self._stop()
            return
        delay = self.policy.delay(len(deaths))
        slot.restart_at = now + delay
        log.error("worker %d (pid %s) %s; restarting it in %.2f s (death %d; %s)",
                  slot.index, pid, how, delay, len(deaths), bound)  # fmt: skip
