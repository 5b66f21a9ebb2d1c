"""First sightings judged by the fleet: a pair new to this process is asked
of the state store (``state_store``) from the worker's event loop, after the
check has been answered, and the answer (new to the fleet, or known) comes
back to the telemetry, which only then writes the decision log line, the
span's event and the first-seen log record.

The check never waits for any of it. A store that is unreachable, slow or
answering errors costs the fleet-wide judgement, never a check: each
sighting it could not take is judged by process memory (``local``), counted
by cause, the outage is logged once, and the store is tried again with a
backoff (0.5 s doubling to 30 s). Sightings judged locally meanwhile are
kept (up to ``backlog``) and written once the store answers again, so that
another replica does not report them new later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from authz.telemetry.state_store import Sighting, StateStore, cause_of

__all__ = ["LOCAL", "STORE", "FleetFirstSeen"]

STORE, LOCAL = "store", "local"
log = logging.getLogger("authz.state_store")
# (what the telemetry handed in, the sighting): its item comes back to ``resolve`` with the answer
_Pending = tuple[Any, Sighting]


class FleetFirstSeen:
    """``submit`` (any thread) hands a pair new to this process to the store;
    ``resolve(item, first, source)`` is called once for each, from the event
    loop or from ``submit`` itself (the store known to be down), never twice.

    ``errors`` counts sightings the store could not take, by cause (``timeout``,
    ``connection``, ``auth``, ``response``, ``error``; ``unavailable`` while it
    is down and not yet retried; ``overflow`` past ``capacity`` waiting);
    ``writes`` the store's answers: ``new`` (this process wrote it first),
    ``known`` (the fleet had it), ``backlog`` (a local judgement written later),
    ``refreshed`` (a pair in use given its whole TTL again)."""

    def __init__(
        self,
        store: StateStore,
        ttl: float,
        resolve: Callable[[Any, bool, str], None],
        *,
        capacity: int = 10_000,
        batch: int = 500,
        backlog: int = 10_000,
        backoff: tuple[float, float] = (0.5, 30.0),
        in_use: Callable[[], list[str]] | None = None,
        refresh_every: float | None = None,
        linger: float = 0.01,
    ) -> None:
        self.store, self.ttl, self._resolve = store, ttl, resolve
        self.capacity, self.batch, self.backlog_capacity = capacity, batch, backlog
        self.backoff = backoff
        # Woken by a first sighting, the writer waits this long for others to join its round trip: a
        # round trip's own cost (a wake-up, a pipeline) then falls on many pairs, not on each.
        self.linger = linger
        # The keys of the pairs this process used since the last call, and how often to ask: their TTL is
        # set afresh (a pair in use never expires while the process that uses it runs; default ttl / 4, a day at most)
        self._in_use = in_use
        self.refresh_every = refresh_every if refresh_every is not None else min(ttl / 4, 86400.0)
        self._refresh_at = time.monotonic() + self.refresh_every
        self.errors: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self.up = False
        self._pending: deque[_Pending] = deque()
        self._in_flight: list[_Pending] = []  # the batch the store is being asked about
        self._backlog: deque[Sighting] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle = False
        self._closed = False
        self._down_until: float | None = None  # monotonic: the store failed; no call before then
        self._delay = 0.0
        self._outage: tuple[float, str] | None = None  # since when, and why

    def start(self) -> None:
        """Start the writer on the running event loop (the worker's)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._run(), name="state-store")

    def submit(self, item: Any, sighting: Sighting) -> None:
        """Ask the store about ``sighting`` (never waits)."""
        loop = self._loop
        if loop is None or self._closed:
            self._local(item, sighting, "unavailable")
        elif self._down_until is not None:
            self._local(item, sighting, "unavailable")  # down: judged now, written once it is back
        elif len(self._pending) >= self.capacity:
            self._local(item, sighting, "overflow")
        else:
            self._pending.append((item, sighting))
            if self._idle:
                self._idle = False
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(self._set_wake)

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _local(self, item: Any, sighting: Sighting, cause: str) -> None:
        self.errors[cause] += 1
        if len(self._backlog) < self.backlog_capacity:
            self._backlog.append(sighting)
        self._resolve(item, True, LOCAL)

    async def _run(self) -> None:
        assert self._wake is not None
        await self._probe()
        while not self._closed:
            if self._down_until is not None:
                await self._sleep(self._down_until - time.monotonic())
                if self._closed:
                    break
                await self._probe()
                continue
            if self._backlog:
                await self._write_backlog()
                continue
            if self._in_use is not None and time.monotonic() >= self._refresh_at:
                await self._refresh()
                continue
            if not self._pending:
                self._wake.clear()
                self._idle = True
                if not self._pending:  # a submit since the check above found the writer busy
                    await self._sleep_idle()
                self._idle = False
                if self._pending and len(self._pending) < self.batch and self.linger > 0:
                    await asyncio.sleep(self.linger)
                continue
            await self._write_pending()

    async def _sleep_idle(self) -> None:
        assert self._wake is not None
        if self._in_use is None:
            await self._wake.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.0, self._refresh_at - time.monotonic()))

    async def _refresh(self) -> None:
        """The whole TTL again for the pairs this process used since the last refresh."""
        assert self._in_use is not None
        self._refresh_at = time.monotonic() + self.refresh_every
        keys = self._in_use()
        for start in range(0, len(keys), self.batch):
            answered, touched = await self._call(self.store.touch(keys[start : start + self.batch], self.ttl))
            if not answered:
                return  # the next refresh covers them: they are in use
            self.writes["refreshed"] += touched

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        self._wake.clear()
        if seconds > 0 and not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)

    async def _call(self, call: Any) -> tuple[bool, Any]:
        """One round trip within the store's timeout: (True, its result), or
        (False, the failure's cause), the store then down until the backoff has passed."""
        try:
            result = await call  # bounded by the store's timeout
        except asyncio.CancelledError:
            raise
        except Exception as error:
            return False, await self._failed(error)
        self._recovered()
        return True, result

    async def _probe(self) -> None:
        answered, _ = await self._call(self.store.ping())
        if answered:
            log.info("state store %s: first sightings are judged by the fleet", self.store.shown)

    async def _write_pending(self) -> None:
        taken = [self._pending.popleft() for _ in range(min(self.batch, len(self._pending)))]
        self._in_flight = taken
        try:
            answered, answers = await self._call(self.store.claim([s for _, s in taken], self.ttl))
        except BaseException:  # cancelled (closing): judged here, never lost
            for item, _ in taken:
                self._resolve(item, True, LOCAL)
            raise
        finally:
            self._in_flight = []
        if not answered:
            for item, sighting in taken:
                self._local(item, sighting, answers)
            return
        for (item, _), new in zip(taken, answers, strict=True):
            self.writes["new" if new else "known"] += 1
            self._resolve(item, new, STORE)

    def _drain_pending(self) -> list[_Pending]:
        drained = list(self._pending)
        self._pending.clear()
        return drained

    async def _write_backlog(self) -> None:
        taken = [self._backlog.popleft() for _ in range(min(self.batch, len(self._backlog)))]
        answered, _ = await self._call(self.store.claim(taken, self.ttl))
        if not answered:
            self._backlog.extendleft(reversed(taken[: self.backlog_capacity - len(self._backlog)]))
            return
        self.writes["backlog"] += len(taken)

    async def _failed(self, error: BaseException) -> str:
        cause = "timeout" if isinstance(error, TimeoutError) else cause_of(error)
        low, high = self.backoff
        self._delay = min(high, max(low, self._delay * 2))
        self._down_until = time.monotonic() + self._delay * random.uniform(0.8, 1.2)
        self.up = False
        if self._outage is None:
            self._outage = (time.monotonic(), cause)
            log.error(
                "state store %s unavailable (%s: %s); first sightings are judged by this process's memory"
                " (first_seen_source: local) and the store is tried again, backing off up to %g s",
                self.store.shown, cause, str(error) or f"no answer within {self.store.timeout:g} s", high,
            )  # fmt: skip
        with contextlib.suppress(Exception):  # the connections are dropped either way
            await asyncio.wait_for(self.store.reset(), self.store.timeout)
        for item, sighting in self._drain_pending():  # they waited for this answer
            self._local(item, sighting, cause)
        return cause

    def _recovered(self) -> None:
        self.up = True
        self._down_until, self._delay = None, 0.0
        if self._outage is not None:
            since, _ = self._outage
            self._outage = None
            log.warning(
                "state store %s answers again after %.1f s; %d sightings judged locally meanwhile are written to it",
                self.store.shown, time.monotonic() - since, len(self._backlog),
            )  # fmt: skip

    def abandon(self) -> None:
        """No more asking (the loop may be gone): what waits, and what comes, is judged locally."""
        self._closed = True
        for item, _ in self._drain_pending():
            self._resolve(item, True, LOCAL)

    async def aclose(self, grace: float = 1.0) -> None:
        """Let the writer finish what is waiting within ``grace`` seconds, then
        judge the rest locally and close the connections."""
        deadline = time.monotonic() + grace
        while (self._pending or self._in_flight) and self._down_until is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._closed = True
        self._set_wake()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.abandon()
        with contextlib.suppress(Exception):  # closing a store that is gone
            await asyncio.wait_for(self.store.aclose(), self.store.timeout)
