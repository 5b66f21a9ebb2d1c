"""Hot reload: the policy files are watched (and reread on request, e.g.
SIGHUP); a change is read, validated and compiled off the serving path and
swapped in by one assignment, so a decision is made by one complete policy
version. A bad change is logged once, counted, and the last good policy
keeps serving.

Files that change while being read (an editor writing in place, a
ConfigMap's ``..data`` symlink swapped mid-read) are caught by comparing
the files' identity before and after reading; the read is then retried.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from authz.core.compiled import CompiledPolicy
from authz.policy.compile import CompileOptions, load_policy
from authz.policy.errors import PolicyError
from authz.policy.load import discover

__all__ = ["PolicyReloader", "fingerprint"]

log = logging.getLogger("authz.reload")
Fingerprint = tuple[tuple[str, str, int, int, int], ...]
_RETRIES = 5
_QUIET_CHECK_MS = 1000  # the watch compares the files' fingerprint after this long without an event


def fingerprint(paths: Sequence[str | Path]) -> Fingerprint:
    """What the files are now: name, resolved path, size, mtime and inode
    of each policy file. Cheap: no file is read."""
    found = []
    for path in discover(paths):
        try:
            stat = path.stat()
            resolved = os.path.realpath(path)
        except OSError:
            found.append((str(path), "", -1, -1, -1))
            continue
        found.append((str(path), resolved, stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(found)


# While a reload runs, the serving thread gets the GIL back sooner (Python's
# default is 5 ms a turn, paid by every check several times over).
_RELOAD_SWITCH_INTERVAL = 0.0005


async def _off_the_loop(paths: Sequence[str], options: CompileOptions) -> CompiledPolicy:
    """Load and compile in a worker thread, the serving thread getting the GIL often."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, _RELOAD_SWITCH_INTERVAL))
    try:
        return await asyncio.to_thread(_load_and_dismantle, paths, options)
    finally:
        sys.setswitchinterval(previous)


def _load_and_dismantle(paths: Sequence[str], options: CompileOptions) -> CompiledPolicy:
    """The compiled policy alone. The validated documents are dropped here, a
    few at a time: freed all at once they hold the GIL in one deallocation
    (300 ms at 100,000 rules), and every check waits for it."""
    policy_set, compiled = load_policy(paths, options)
    documents: list[object] = [*policy_set.policies, *policy_set.tests, *policy_set.revocations]
    del policy_set
    while documents:
        del documents[-64:]
    return compiled


class PolicyReloader:
    """Keeps ``current`` up to date and hands each new version to ``on_swap``.

    ``watch`` runs until ``stop``: filesystem events (inotify through
    watchfiles, or polling every ``poll_seconds``), grouped until
    ``debounce_ms`` pass quietly; :meth:`request` (SIGHUP) asks for a reread.
    """

    def __init__(
        self,
        paths: Sequence[str],
        options: CompileOptions,
        on_swap: Callable[[CompiledPolicy], None],
        *,
        debounce_ms: int = 50,
        poll_seconds: float | None = None,
        what: str = "policy",
    ) -> None:
        self.paths = tuple(paths)
        self.what = what  # in the log lines: "policy", "shadow policy"
        self.options = options
        self.on_swap = on_swap
        self.debounce_ms = debounce_ms
        self.poll_seconds = poll_seconds
        self.current: CompiledPolicy | None = None
        self.counts: Counter[str] = Counter()  # applied, rejected, unchanged, retried
        self.loaded_at = 0.0  # time.time() of the last swap
        self._applied: Fingerprint | None = None
        self._rejected: Fingerprint | None = None
        self._wake: asyncio.Event | None = None

    @property
    def rejected(self) -> bool:
        """Whether the files hold a change that was rejected: the last good version still serves."""
        return self._rejected is not None

    async def load(self) -> CompiledPolicy:
        """The first load: raises PolicyError, nothing to fall back on."""
        before = fingerprint(self.paths)
        compiled = await _off_the_loop(self.paths, self.options)
        self._swap(compiled, before)
        return compiled

    async def reload(self, cause: str = "request") -> bool:
        """Reread if the files changed since the last load; True when a new version was swapped in."""
        for _ in range(_RETRIES):
            before = fingerprint(self.paths)
            if before in (self._applied, self._rejected):
                return False
            started = time.perf_counter()
            try:
                compiled = await _off_the_loop(self.paths, self.options)
            except PolicyError as exc:
                if fingerprint(self.paths) != before:
                    self.counts["retried"] += 1
                    continue  # changed while read: read the new state
                self._rejected = before
                self.counts["rejected"] += 1
                log.error(
                    "%s change rejected (%s); still serving %s:\n  %s",
                    self.what, cause, self.current.version if self.current else "nothing",
                    "\n  ".join(map(str, exc.problems)),
                )  # fmt: skip
                return False
            if fingerprint(self.paths) != before:
                self.counts["retried"] += 1
                continue
            previous = self.current
            if previous is not None and compiled.version == previous.version:
                self._applied = before
                self.counts["unchanged"] += 1
                return False
            self._swap(compiled, before)
            log.info(
                "%s reloaded (%s): %s -> %s, %d policies, in %.0f ms",
                self.what, cause, previous.version if previous else "nothing", compiled.version,
                len(compiled.services), (time.perf_counter() - started) * 1000,
            )  # fmt: skip
            return True
        log.warning("%s files kept changing while being read; trying again on the next change", self.what)
        return False

    def _swap(self, compiled: CompiledPolicy, source: Fingerprint) -> None:
        self.current = compiled
        self._applied, self._rejected = source, None
        self.loaded_at = time.time()
        self.counts["applied"] += 1
        self.on_swap(compiled)

    def request(self) -> None:
        """Ask for a reread (SIGHUP); safe to call from the event loop's signal handler."""
        if self._wake is not None:
            self._wake.set()

    async def watch(self, stop: asyncio.Event, *, files: bool = True) -> None:
        """Reload on requests and (with ``files``) file events until ``stop``; reloads never overlap."""
        self._wake = asyncio.Event()
        watcher = asyncio.create_task(self._events(stop) if files else stop.wait())
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                woken = asyncio.create_task(self._wake.wait())
                await asyncio.wait({woken, stopping}, return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                if stop.is_set():
                    break
                self._wake.clear()
                try:
                    await self.reload("change")
                except Exception:  # never let the watcher die: the last good policy serves
                    log.exception(
                        "%s reload failed; still serving %s", self.what, self.current and self.current.version
                    )
        finally:
            watcher.cancel()
            stopping.cancel()

    async def _events(self, stop: asyncio.Event) -> None:
        """A reread on each change, and on each quiet second (``_QUIET_CHECK_MS``)
        once the watch is in place: a change made between the first load and the
        watch (a worker restarted during a rollout) has no event of its own.
        A reread of unchanged files stops at their fingerprint."""
        import watchfiles

        targets = sorted({str(path if path.is_dir() else path.parent) for path in map(Path, self.paths)})
        async for _ in watchfiles.awatch(
            *targets,
            watch_filter=None,  # a ConfigMap update shows as renames of dot-named links
            debounce=max(self.debounce_ms * 4, 200),
            step=self.debounce_ms,
            stop_event=stop,
            rust_timeout=_QUIET_CHECK_MS,
            yield_on_timeout=True,
            force_polling=self.poll_seconds is not None,
            poll_delay_ms=int((self.poll_seconds or 0.3) * 1000),
            ignore_permission_denied=True,
        ):
            self.request()
