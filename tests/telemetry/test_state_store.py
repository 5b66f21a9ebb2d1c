"""The state store against the real redis-server: URLs refused before use,
keys that cannot be forged, SET NX written once for the fleet, and the
writer's fallback to process memory, backoff and return."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from authz.telemetry.fleet import LOCAL, STORE, FleetFirstSeen
from authz.telemetry.state_store import (
    KEY_PREFIX,
    Sighting,
    StateStore,
    StateStoreURLError,
    check_url,
    pair_key,
    redacted,
)
from tests.redis_server import RedisServer

CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"


async def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``condition`` (bounded) while the event loop runs the writer."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def sighting(destination: str, zone: str | None = "eu-west-prod", identity: str = CI) -> Sighting:
    return Sighting(zone, identity, destination, "2026-12-07T10:00:00.000Z", "d" * 32, "allow")


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://redis",
        "redis://:secret@redis.example.internal:6380/3",
        "redis://user:secret@[::1]:6379",
        "rediss://redis.example.internal:6380/0?ssl_ca_certs=/etc/ca.pem",
        "unix:///run/redis/redis.sock",
        "unix:///run/redis/redis.sock?db=2",
    ],
)
def test_urls_a_store_can_have(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://redis:6379", "scheme"),
        ("redis:6379", "scheme"),
        ("127.0.0.1:6379", "scheme"),
        ("redis://:6379/0", "no host"),
        ("redis://redis:port/0", "Port could not be cast"),
        ("redis://redis:70000/0", "Port out of range"),
        ("redis://redis:0/0", "port 0"),
        ("redis://redis:6379/zero", "database number"),
        ("redis://redis:6379/0?db=x", "not a database number"),
        ("redis://redis:6379/0?pool=9", "unknown parameter pool"),
        ("unix://relative.sock", "absolute"),
        ("redis://:hunter2@redis:port/0", "***"),
    ],
)
def test_urls_refused_say_why(url: str, said: str) -> None:
    with pytest.raises(StateStoreURLError, match=None) as raised:
        check_url(url)
    assert said in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_a_password_never_shows() -> None:
    assert redacted("redis://:hunter2@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redacted("rediss://authz:hunter2@redis:6380") == "rediss://authz:***@redis:6380"
    assert redacted("redis://redis:6379/0") == "redis://redis:6379/0"


def test_a_pair_is_one_key_no_separator_can_forge() -> None:
    key = pair_key("eu|west", CI, "github.com:443")
    assert key == KEY_PREFIX + f'["eu|west","{CI}","github.com:443"]'
    assert pair_key("a", "b,c", "d") != pair_key("a,b", "c", "d")
    assert pair_key(None, CI, "x:1") == KEY_PREFIX + f'[null,"{CI}","x:1"]'


async def test_the_first_writer_of_a_pair_wins_once_for_the_fleet(redis_server: RedisServer) -> None:
    one, two = StateStore(redis_server.url, timeout=5), StateStore(redis_server.url, timeout=5)
    try:
        first = [sighting("github.com:443"), sighting("pypi.org:443")]
        assert await one.claim(first, ttl=3600) == [True, True]
        assert await two.claim([sighting("github.com:443"), sighting("github.com:443", zone="us")], 3600) == [
            False,
            True,
        ]
        (key,) = [k for k in redis_server.scan() if "github.com" in k and "eu-west-prod" in k]
        assert json.loads(redis_server.command("--raw", "GET", key)) == {
            "time": "2026-12-07T10:00:00.000Z", "decision_id": "d" * 32, "verdict": "allow", "by": "authz serve",
        }  # fmt: skip
        assert 3590 <= int(redis_server.command("TTL", key).split()[-1]) <= 3600
        redis_server.command("EXPIRE", key, "10")
        assert await two.claim([sighting("github.com:443")], 3600) == [False]  # learned again: in use
        assert int(redis_server.command("TTL", key).split()[-1]) > 3000
        assert await two.claim_each([(sighting("github.com:443"), 60)]) == [False]  # baseline: left be
        assert int(redis_server.command("TTL", key).split()[-1]) > 3000
        assert await two.known([key, KEY_PREFIX + "nothing"]) == [True, False]
    finally:
        await one.aclose()
        await two.aclose()


class Judged:
    """What the writer answered, item by item."""

    def __init__(self) -> None:
        self.answers: dict[Any, tuple[bool, str]] = {}

    def __call__(self, item: Any, first: bool, source: str) -> None:
        assert item not in self.answers, f"{item} judged twice"
        self.answers[item] = (first, source)


async def test_the_writer_falls_back_to_memory_then_returns_to_the_store(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    judged = Judged()
    # A generous timeout: a stall of this shared machine must not pass for the store's failure (a
    # store stopped refuses at once).
    fleet = FleetFirstSeen(StateStore(redis_server.url, timeout=5), 3600, judged, backoff=(0.05, 0.2))
    fleet.start()
    try:
        await until(lambda: fleet.up, "the store answers the first PING")
        fleet.submit("a", sighting("a.example:443"))
        fleet.submit("b", sighting("b.example:443"))
        await until(lambda: len(judged.answers) == 2, "both judged")
        assert judged.answers == {"a": (True, STORE), "b": (True, STORE)}
        assert fleet.writes == {"new": 2}

        with caplog.at_level(logging.INFO, logger="authz.state_store"):
            redis_server.stop()
            for index in range(20):  # sightings all through the outage: each judged, none waits
                fleet.submit(f"down{index}", sighting(f"down{index}.example:443"))
                await until(lambda i=index: f"down{i}" in judged.answers, "judged in the outage")
                await asyncio.sleep(0.01)
            assert {judged.answers[f"down{i}"] for i in range(20)} == {(True, LOCAL)}
            assert fleet.errors["connection"] >= 1
            assert sum(fleet.errors.values()) == 20
            assert not fleet.up
            redis_server.start()
            await until(lambda: fleet.up, "the store answers again")
            fleet.submit("after", sighting("after.example:443"))
            fleet.submit("again", sighting("a.example:443"))
            await until(lambda: "after" in judged.answers and "again" in judged.answers, "judged after")
        outage = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(outage) == 1, [r.getMessage() for r in caplog.records]  # logged once an outage
        assert any("answers again" in r.getMessage() for r in caplog.records)
        assert judged.answers["after"] == (True, STORE)
        # Redis came back empty (no persistence): what this process saw meanwhile was written to it
        await until(lambda: fleet.writes["backlog"] == 20, "the outage's sightings written")
        assert len([k for k in redis_server.scan() if "down" in k]) == 20
        assert judged.answers["again"][1] == STORE
    finally:
        await fleet.aclose()


async def test_a_store_that_never_answers_costs_a_timeout_not_a_wait(tmp_path: Any) -> None:
    """A listener that accepts and never answers (a hung Redis): each sighting is
    judged locally within the timeout, counted as one; ``submit`` never blocks."""
    hung = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    judged = Judged()
    fleet = FleetFirstSeen(
        StateStore(f"redis://127.0.0.1:{port}/0", timeout=0.2), 3600, judged, backoff=(0.05, 0.1)
    )
    fleet.start()
    try:
        for index in range(50):
            fleet.submit(index, sighting(f"h{index}.example:443"))
        assert judged.answers == {}  # handed over: the writer runs on the loop, after this test yields
        await until(lambda: len(judged.answers) == 50, "every sighting judged")
        assert set(judged.answers.values()) == {(True, LOCAL)}
        assert fleet.errors["timeout"] >= 1
        assert sum(fleet.errors.values()) == 50
    finally:
        await fleet.aclose()
        hung.close()


async def test_pairs_in_use_get_their_whole_ttl_again(redis_server: RedisServer) -> None:
    """A process that runs longer than the TTL keeps the pairs it uses known: the
    writer gives them the whole TTL again every ``refresh_every``, and only those."""
    in_use: list[list[str]] = [[]]
    judged = Judged()
    fleet = FleetFirstSeen(
        StateStore(redis_server.url, timeout=5), 3600, judged, in_use=lambda: in_use.pop() if in_use else [],
        refresh_every=0.05,
    )  # fmt: skip
    fleet.start()
    try:
        fleet.submit("used", sighting("used.example:443"))
        fleet.submit("idle", sighting("idle.example:443"))
        await until(lambda: len(judged.answers) == 2, "both written")
        used, idle = sighting("used.example:443").key, sighting("idle.example:443").key
        for key in (used, idle):
            redis_server.command("EXPIRE", key, "100")
        in_use.append([used, pair_key("eu-west-prod", CI, "gone.example:443")])  # one the store lost
        await until(lambda: fleet.writes["refreshed"] == 1, "the pair in use refreshed")
        assert int(redis_server.command("TTL", used).split()[-1]) > 3000
        assert int(redis_server.command("TTL", idle).split()[-1]) <= 100
        assert len(redis_server.scan()) == 2  # EXPIRE makes no key
    finally:
        await fleet.aclose()


async def test_a_unix_socket_store_with_its_database(redis_server: RedisServer) -> None:
    store = StateStore(f"unix://{redis_server.socket}?db=2", timeout=5)
    try:
        assert await store.claim([sighting("unix.example:443")], 3600) == [True]
        assert await store.claim([sighting("unix.example:443")], 3600) == [False]
    finally:
        await store.aclose()
    assert redis_server.scan(db=2) == [sighting("unix.example:443").key]
    assert redis_server.scan(db=0) == []
