"""The JSON-lines decision log: one record a decision, under stable keys,
written by a thread of its own so that a slow disk never holds a check."""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from authz import __version__
from authz.core.decision import Decision
from authz.core.request import EgressRequest

__all__ = ["DecisionLog", "decision_record"]


class DecisionLog:
    """JSON lines from a bounded queue (what does not fit is dropped and
    counted); a file is rotated past ``max_bytes`` (``backups`` kept)."""

    def __init__(
        self, target: str, *, max_bytes: int = 100 * 2**20, backups: int = 3, capacity: int = 10_000
    ) -> None:
        self.target = target
        self.max_bytes = max_bytes
        self.backups = backups
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(capacity)
        self._file: TextIO | None = None
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _open(self) -> TextIO:
        if self.target == "-":
            return sys.stdout
        return open(self.target, "a", encoding="utf-8")

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        path = Path(self.target)
        for index in range(self.backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{index + 1}"))
        if self.backups > 0:
            path.replace(path.with_name(f"{path.name}.1"))
        else:
            path.unlink()
        self._file = self._open()

    def _run(self) -> None:
        self._file = self._open()
        while True:
            record = self._queue.get()
            if record is None:
                break
            self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
            if self.target != "-" and self._file.tell() > self.max_bytes:
                self._rotate()
            elif self._queue.empty():
                self._file.flush()
        self._file.flush()
        if self._file is not sys.stdout:
            self._file.close()


def decision_record(
    decision: Decision, decision_id: str, request: EgressRequest | None, started_ns: int, ended_ns: int
) -> dict[str, Any]:
    """The decision log's record: the span's fields under stable keys, and the
    input of a later inventory command (observed flows to a proposed policy)."""
    record = decision.to_dict()
    record.update(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started_ns / 1e9))
            + f".{started_ns % 10**9 // 10**6:03d}Z",
            "decision_id": decision_id,
            "duration_ms": round((ended_ns - started_ns) / 1e6, 3),
            "sni": request.sni if request is not None else None,
            "method": request.method if request is not None else None,
            "path": request.path if request is not None else None,
            "zone": request.zone if request is not None else None,
            "service_version": __version__,
        }
    )
    return record
