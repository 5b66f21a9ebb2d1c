"""First-seen destinations: the detective signal of an identity reaching
somewhere it never reached before."""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["FirstSeen"]

_Key = tuple[str, str | None, int | None, str | None]
_MARK: _Key = ("", None, None, None)  # never a pair (an identity is never empty): where the last look ended


class FirstSeen:
    """Which (identity, destination[, zone]) pairs this process has seen, the
    most recent ``capacity`` of them: memory stays bounded, and a pair evicted
    long ago may be reported again. Each pair remembers who judged it: ``local``
    (this memory) until the fleet's state store has answered for it (``store``).
    The zone is part of the pair only with a state store; without one, a pair
    is (identity, host, port) as it always was."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[_Key, str] = OrderedDict()
        self._lock = threading.Lock()

    def first(self, identity: str, host: str | None, port: int | None, zone: str | None = None) -> bool:
        """Whether (identity, host, port, zone) is new here; it is remembered either way."""
        key = (identity, host, port, zone)
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
            self._seen[key] = "local"
            if len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
            return True

    def judged_by(self, identity: str, host: str | None, port: int | None, zone: str | None = None) -> str:
        """Who judged the pair: ``store`` or ``local`` (``local`` for one evicted since)."""
        return self._seen.get((identity, host, port, zone), "local")

    def used_since_last_look(self) -> list[_Key]:
        """The pairs seen since the previous call (every pair the first time),
        most recent first: the memory is in order of last use, and a mark placed
        at its end on each call tells where the last look ended. (For the state
        store's refresh of pairs in use: never on the check path.)"""
        keys = list(reversed(self._seen))  # one C-level copy: no check changes the order meanwhile
        used: list[_Key] = []
        for key in keys:
            if key == _MARK:
                break
            used.append(key)
        with self._lock:
            self._seen[_MARK] = "mark"
            self._seen.move_to_end(_MARK)
        return used

    def judged_by_store(self, identity: str, host: str | None, port: int | None, zone: str | None) -> None:
        """The fleet's state store answered for the pair."""
        key = (identity, host, port, zone)
        if key in self._seen:
            self._seen[key] = "store"  # a value replaced in place: the order stays
