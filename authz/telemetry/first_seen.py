"""First-seen destinations: the detective signal of an identity reaching
somewhere it never reached before."""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["FirstSeen"]


class FirstSeen:
    """Which (identity, destination) pairs this process has seen, the most
    recent ``capacity`` of them: memory stays bounded, and a pair evicted
    long ago may be reported again (across replicas, the collector joins)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str | None, int | None], None] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, identity: str, host: str | None, port: int | None) -> bool:
        """Whether (identity, host, port) is new here; it is remembered either way."""
        key = (identity, host, port)
        seen = self._seen
        if key in seen:  # the usual case, without the lock: each step is atomic
            try:  # noqa: SIM105 - contextlib.suppress costs 0.5 µs a check
                seen.move_to_end(key)
            except KeyError:  # evicted in between
                pass
            return False
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
            return True
