"""`authz baseline` against the real redis-server: the pairs of decision logs
written as known (first record's time, id and verdict; the TTL left since the
last), then a server with that store reports none of them first seen, and a
second run, or a dry run, writes nothing."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from authz.cli import main
from authz.telemetry import Telemetry, TelemetryConfig
from authz.telemetry.state_store import pair_key
from tests.analysis.traffic import CI, PAYMENTS, ZONE, http, records, tls, write_log
from tests.redis_server import RedisServer
from tests.telemetry.helpers import decide

NOW = datetime.now(UTC)


def _at(days_ago: float) -> str:
    return (NOW - timedelta(days=days_ago)).isoformat()


@pytest.fixture
def logs(tmp_path: Path) -> list[str]:
    one = write_log(
        tmp_path / "d.jsonl",
        [
            *records(
                [
                    (_at(10), http(CI, "registry.npmjs.org")),
                    (_at(9), http(CI, "registry.npmjs.org", method="HEAD")),  # the same pair again
                    (_at(8), http(CI, "pastebin.com")),  # denied: a pair all the same
                    (_at(120), tls(PAYMENTS, "bank-gateway.example.com")),  # older than the TTL
                    (_at(200), http(PAYMENTS, "bank-gateway.example.com", method="POST")),
                    (_at(1), http(None, "github.com")),  # no identity: no pair
                ]
            ),
            "not a record",
        ],
    )
    two = write_log(tmp_path / "d.jsonl.worker1", records([(_at(2), tls(CI, "github.com"))]))
    return [str(one), str(two)]


def _baseline(redis: RedisServer, logs: list[str], *extra: str) -> int:
    return main(["baseline", *logs, "--state-store", redis.url, *extra])


def test_baseline_writes_each_pair_once_with_its_first_record(
    redis_server: RedisServer, logs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert _baseline(redis_server, logs, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "4 identity-destination pairs in 7 decisions from 2 files (1 malformed line skipped)" in out
    assert "3 would be written to redis://127.0.0.1:" in out
    assert "1 last seen longer ago than --first-seen-ttl 90d: left out" in out
    assert redis_server.scan() == []

    assert _baseline(redis_server, logs) == 0
    assert "3 written to redis://" in capsys.readouterr().out
    npm = pair_key(ZONE, CI, "registry.npmjs.org:443")
    assert sorted(redis_server.scan()) == sorted(
        [npm, pair_key(ZONE, CI, "pastebin.com:443"), pair_key(ZONE, CI, "github.com:443")]
    )
    stored = json.loads(redis_server.command("--raw", "GET", npm))
    assert stored == {"time": stored["time"], "decision_id": "d0", "verdict": "allow", "by": "authz baseline"}
    assert stored["time"].startswith(_at(10)[:16])
    ttl = int(redis_server.command("TTL", npm).split()[-1])
    assert 80 * 86400 - 60 < ttl <= 81 * 86400  # 90 days less the 9 since it was last seen

    assert _baseline(redis_server, logs) == 0  # again: nothing new
    again = capsys.readouterr().out
    assert "0 written to redis://127.0.0.1:" in again
    assert "3 already known" in again
    assert _baseline(redis_server, logs, "--since", "228h") == 0  # the window: 9.5 days back
    assert "3 identity-destination pairs in 4 decisions" in capsys.readouterr().out


async def test_a_server_after_a_baseline_reports_only_what_is_new(
    redis_server: RedisServer, logs: list[str], tmp_path: Path
) -> None:
    assert await asyncio.to_thread(_baseline, redis_server, logs) == 0
    log = tmp_path / "served.jsonl"
    telemetry = Telemetry(
        TelemetryConfig({"OTEL_SDK_DISABLED": "true"}, decision_log=str(log), state_store=redis_server.url)
    )
    telemetry.start_state_store()
    for host in ("registry.npmjs.org", "github.com", "pypi.org"):
        decision, request = decide(CI, host, zone=ZONE)
        telemetry.record(decision, host, request, {}, time.time_ns())
    await telemetry.aclose()
    seen = {r["decision_id"]: (r["first_seen"], r["first_seen_source"]) for r in map(json.loads, log.open())}
    assert seen == {
        "registry.npmjs.org": (False, "store"),
        "github.com": (False, "store"),
        "pypi.org": (True, "store"),
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state-store", "http://redis"], "--state-store http://redis: the scheme is one of"),
        (["--state-store", "redis://127.0.0.1:1/0", "--since", "tomorrow"], "neither an RFC 3339 time"),
        (["--state-store", "redis://127.0.0.1:1/0", "--first-seen-ttl", "0s"], "must be above 0"),
    ],
)
def test_bad_arguments_exit_2(
    args: list[str], message: str, logs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["baseline", *logs, *args]) == 2
    assert message in capsys.readouterr().err


def test_a_store_that_cannot_be_reached_exits_1_and_says_so(
    logs: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from authz.gateway.lab import free_port

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"  # nothing listens there
    assert main(["baseline", *logs, "--state-store", url, "--timeout", "1"]) == 1
    err = capsys.readouterr().err
    assert "the state store redis://:***@127.0.0.1:" in err
    assert "(connection:" in err
    assert "hunter2" not in err
