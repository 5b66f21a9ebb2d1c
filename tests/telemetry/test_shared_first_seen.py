"""The telemetry with a state store (the real redis-server): first_seen true
once per pair across processes and restarts, ``first_seen_source`` in every
record, and the store's outage judged locally, counted, and left behind."""

from __future__ import annotations

import json
import time
from pathlib import Path

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from authz.telemetry import Telemetry, TelemetryConfig
from tests.redis_server import RedisServer
from tests.telemetry.helpers import CI, decide, metric_points
from tests.telemetry.test_state_store import until

NO_SPANS = {"OTEL_SDK_DISABLED": "true"}


def _telemetry(
    log: Path, url: str, reader: InMemoryMetricReader | None = None, **config: object
) -> Telemetry:
    # A generous timeout: a stall of this shared machine must not pass for the store's failure (a store
    # stopped refuses at once).
    config = {"state_store_timeout": 5.0, **config}
    telemetry = Telemetry(
        TelemetryConfig(NO_SPANS, decision_log=str(log), state_store=url, **config),  # type: ignore[arg-type]
        metric_readers=[reader] if reader is not None else [],
    )
    telemetry.start_state_store()
    return telemetry


def _seen(telemetry: Telemetry, host: str, decision_id: str, zone: str = "eu-west-prod") -> None:
    decision, request = decide(CI, host, zone=zone)
    telemetry.record(decision, decision_id, request, {}, time.time_ns())


def _records(*logs: Path) -> list[dict[str, object]]:
    return [json.loads(line) for log in logs if log.exists() for line in log.read_text().splitlines()]


async def test_two_processes_and_a_restart_give_one_first_sighting(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    logs = [tmp_path / f"worker{index}.jsonl" for index in range(3)]
    one, two = _telemetry(logs[0], redis_server.url), _telemetry(logs[1], redis_server.url)
    for telemetry in (one, two, one, two):  # both see both pairs, at the same time, twice
        for host in ("github.com", "pypi.org"):
            _seen(telemetry, host, "d" * 32)
    await one.aclose()
    await two.aclose()
    restarted = _telemetry(logs[2], redis_server.url)  # a new process: its memory is empty
    _seen(restarted, "github.com", "e" * 32)
    _seen(restarted, "github.com", "f" * 32, zone="us-east-prod")
    await restarted.aclose()

    records = _records(*logs)
    assert len(records) == 10
    firsts = sorted((r["zone"], r["destination"], r["first_seen_source"]) for r in records if r["first_seen"])
    assert firsts == [
        ("eu-west-prod", "github.com:443", "store"),
        ("eu-west-prod", "pypi.org:443", "store"),
        ("us-east-prod", "github.com:443", "store"),  # another zone: another pair
    ]
    # Each process asked the store about each pair once (six answers); a record of a pair while its
    # answer was on the way is judged by this process's memory.
    assert sum(r["first_seen_source"] == "store" for r in records) >= 6
    assert {r["first_seen_source"] for r in records} <= {"store", "local"}
    assert len(redis_server.scan()) == 3


async def test_the_store_gone_judges_locally_and_counts(redis_server: RedisServer, tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    log = tmp_path / "d.jsonl"
    telemetry = _telemetry(log, redis_server.url, reader)
    try:
        assert telemetry.fleet is not None
        await until(lambda: telemetry.fleet_up, "the store answers")
        _seen(telemetry, "github.com", "a" * 32)
        await until(lambda: telemetry.fleet is not None and telemetry.fleet.writes["new"] == 1, "written")
        redis_server.stop()
        _seen(telemetry, "pypi.org", "b" * 32)
        _seen(telemetry, "pypi.org", "c" * 32)
        await until(
            lambda: sum(telemetry.fleet.errors.values()) == 1 if telemetry.fleet else False, "fell back"
        )
        (up,) = metric_points(reader, "egress_authz.state_store.up")
        assert up.value == 0
        errors = {
            p.attributes["cause"]: p.value for p in metric_points(reader, "egress_authz.state_store.errors")
        }
        assert sum(errors.values()) == 1
        assert set(errors) <= {"connection", "timeout", "unavailable"}
        (first,) = metric_points(reader, "egress_authz.first_seen_destinations")
        assert first.value == 2  # github.com from the store, pypi.org from this process's memory
    finally:
        await telemetry.aclose()
    by_id = {r["decision_id"]: (r["first_seen"], r["first_seen_source"]) for r in _records(log)}
    assert by_id == {"a" * 32: (True, "store"), "b" * 32: (True, "local"), "c" * 32: (False, "local")}
