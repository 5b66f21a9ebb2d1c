"""The JSON-lines decision log: one record a decision, under stable keys,
written by a thread of its own so that a slow disk never holds a check."""

from __future__ import annotations

import contextlib
import json
import logging
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

log = logging.getLogger("authz.telemetry")


class DecisionLog:
    """JSON lines from a bounded queue (what does not fit is dropped and
    counted: ``dropped``); a file is rotated past ``max_bytes`` (``backups`` kept).

    A file that cannot be opened, written or rotated (a read-only or full
    disk, a directory gone) costs records, never a check: they are counted
    (``failed``), the error is logged once an outage, and the file is
    reopened at most every ``retry_seconds`` until it can be written again."""

    def __init__(
        self,
        target: str,
        *,
        max_bytes: int = 100 * 2**20,
        backups: int = 3,
        capacity: int = 10_000,
        retry_seconds: float = 5.0,
    ) -> None:
        self.target = target
        self.max_bytes = max_bytes
        self.backups = backups
        self.retry_seconds = retry_seconds
        self.dropped = 0
        self.failed = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(capacity)
        self._file: TextIO | None = None
        self._unflushed = 0  # records written since the last flush: lost with a failed one
        self._outage_failed: int | None = None  # ``failed`` when the current outage began
        self._retry_at = 0.0
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
        self._file = None
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
        while True:
            record = self._queue.get()
            if record is None:
                break
            self._put(json.dumps(record, separators=(",", ":")) + "\n")
        try:
            if self._file is not None:
                self._file.flush()
        except OSError as error:
            self._broken(error)
        self._release()

    def _put(self, line: str) -> None:
        if self._file is None and not self._reopen():
            self.failed += 1
            return
        assert self._file is not None
        try:
            self._file.write(line)
            self._unflushed += 1
            if self.target != "-" and self._file.tell() > self.max_bytes:
                self._file.flush()
                self._unflushed = 0
                self._rotate()
            elif self._queue.empty():
                self._file.flush()
                self._unflushed = 0
        except OSError as error:
            self._broken(error)

    def _reopen(self) -> bool:
        if time.monotonic() < self._retry_at:
            return False
        try:
            self._file = self._open()
        except OSError as error:
            self._broken(error)
            return False
        if self._outage_failed is not None:
            log.warning("decision log %s is written again; %d records lost",
                        self.target, self.failed - self._outage_failed)  # fmt: skip
            self._outage_failed = None
        return True

    def _broken(self, error: OSError) -> None:
        """The file failed: what it had not flushed is lost; try again later."""
        self.failed += self._unflushed
        self._unflushed = 0
        if self._outage_failed is None:
            self._outage_failed = self.failed
            log.error("decision log %s cannot be written (%s); records are counted and dropped,"
                      " and it is reopened every %g s", self.target, error, self.retry_seconds)  # fmt: skip
        self._release()
        self._retry_at = time.monotonic() + self.retry_seconds

    def _release(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            with contextlib.suppress(OSError):  # closing flushes, and that may fail again
                self._file.close()
        self._file = None


def decision_record(
    decision: Decision,
    decision_id: str,
    request: EgressRequest | None,
    started_ns: int,
    ended_ns: int,
    shadow: Decision | None = None,
) -> dict[str, Any]:
    """The decision log's record: the span's fields under stable keys, and
    what `authz inventory` and `authz replay` rebuild the request from: the
    decision's ``host`` is canonical (or the SNI for a connection), so the
    HTTP host as the gateway saw it (``http_host``) and the ``scheme`` are kept too.
    ``shadow`` is the shadow policy's decision of the same check (null keys without one)."""
    record = decision.to_dict()
    record.update(
        {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started_ns / 1e9))
            + f".{started_ns % 10**9 // 10**6:03d}Z",
            "decision_id": decision_id,
            "duration_ms": round((ended_ns - started_ns) / 1e6, 3),
            "http_host": request.host if request is not None else None,
            "scheme": request.scheme if request is not None else None,
            "sni": request.sni if request is not None else None,
            "method": request.method if request is not None else None,
            "path": request.path if request is not None else None,
            "zone": request.zone if request is not None else None,
            "service_version": __version__,
            "shadow_verdict": shadow.verdict.value if shadow is not None else None,
            "shadow_reason": shadow.reason.value if shadow is not None else None,
            "shadow_policy_version": shadow.policy_version if shadow is not None else None,
        }
    )
    return record
