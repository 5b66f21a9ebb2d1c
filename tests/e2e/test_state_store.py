"""`authz serve --state-store` as a fleet runs it: real authz processes (the
default transport, pyvoy: each worker its own Envoy and interpreter) and the
real redis-server, all on 127.0.0.1. A pair is first seen once whatever the
processes and restarts; the store stopped under continuous checks changes no
answer and fails none, first sightings fall back to process memory
(``first_seen_source: local``) and are counted; once it is back, sightings
reach it again."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from authz import EgressRequest, evaluate
from authz.ext_authz.server import SERVICE_NAME
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest, CheckResponse
from authz.policy import load_policy
from authz.testing import check_request
from tests.e2e.conftest import EXAMPLES, Served, authz_serve, free_port, wait_serving
from tests.redis_server import RedisServer

CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
ZONE = "eu-west-prod"
POLICY = load_policy([EXAMPLES])[1]
OK, PERMISSION_DENIED = 0, 7


def _stub(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        f"/{SERVICE_NAME}/Check",
        request_serializer=CheckRequest.SerializeToString,
        response_deserializer=CheckResponse.FromString,
    )


def _serve(stack: ExitStack, redis: RedisServer, log: Path, *extra: str) -> tuple[Served, int]:
    """authz with the store; a generous timeout: a stall of this shared machine must not pass for the
    store's failure (a store stopped refuses at once)."""
    port = free_port()
    served = stack.enter_context(
        authz_serve("--policy", str(EXAMPLES), "--listen", f"127.0.0.1:{port}", "--state-store", redis.url,
                    "--decision-log", str(log), "--zone", ZONE, "--state-store-timeout", "5", *extra)
    )  # fmt: skip
    wait_serving(f"127.0.0.1:{port}", timeout=60)
    return served, port


def _records(directory: Path) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for log in sorted(directory.glob("*.jsonl*"))
        for line in log.read_text().splitlines()
    ]


def _wait_records(directory: Path, count: int, timeout: float = 30.0) -> list[dict[str, object]]:
    """The decision logs once they hold ``count`` records (their writer is a thread of each worker)."""
    deadline = time.monotonic() + timeout
    while len(records := _records(directory)) < count:
        assert time.monotonic() < deadline, f"{len(records)} of {count} records"
        time.sleep(0.05)
    return records


def test_two_processes_and_a_restart_give_one_first_seen_a_pair(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    github = check_request(EgressRequest(CI, sni="github.com", port=443, zone=ZONE))
    with ExitStack() as first_run:
        _, one = _serve(first_run, redis_server, logs / "one.jsonl", "--workers", "2")
        two_stack = first_run.enter_context(ExitStack())
        two_served, two = _serve(two_stack, redis_server, logs / "two.jsonl")
        for port in (one, two, one, two, one, two):
            for _ in range(3):  # new connections: the kernel spreads them over process one's workers
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    assert _stub(channel)(github, timeout=10).status.code == OK
        _wait_records(logs, 18)
        assert two_served.stop()[0] == 0  # a redeploy of process two: its memory goes with it
        two_stack.close()
        _, two = _serve(first_run, redis_server, logs / "two.jsonl")
        with grpc.insecure_channel(f"127.0.0.1:{two}") as channel:
            assert _stub(channel)(github, timeout=10).status.code == OK
        records = _wait_records(logs, 19)
    firsts = [r for r in records if r["first_seen"]]
    assert [(r["identity"], r["destination"], r["first_seen_source"]) for r in firsts] == [
        (CI, "github.com:443", "store")
    ]
    assert len(records) == 19
    (key,) = redis_server.scan()
    assert json.loads(redis_server.command("--raw", "GET", key))["decision_id"] == firsts[0]["decision_id"]


def _metric(port: int, name: str) -> dict[str, float]:
    """A metric's samples by their ``cause``/``result`` label (the whole value without one)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        exposition = reply.read().decode()
    found: dict[str, float] = {}
    for line in exposition.splitlines():
        if line.startswith(name):
            label = re.search(r'(?:cause|result)="([^"]*)"', line)
            found[label.group(1) if label else ""] = float(line.rsplit(" ", 1)[1])
    return found


class Traffic:
    """Checks one after another from a thread, each to a destination never asked
    before (a new pair each time, allowed or denied), every answer compared
    with the engine's; bounded in count and time."""

    def __init__(self, port: int, limit: int = 20_000, seconds: float = 120.0) -> None:
        self.port, self.limit, self.seconds = port, limit, seconds
        self.sent = self.failed = 0
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _request(self, index: int) -> EgressRequest:
        host = "github.com" if index % 5 == 0 else f"h{index}.example.com"
        return EgressRequest(CI, host, 443 + index % 3000, method="GET", path="/", zone=ZONE)

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            check = _stub(channel)
            while not self._stop.is_set() and self.sent < self.limit and time.monotonic() < deadline:
                request = self._request(self.sent)
                self.sent += 1
                try:
                    response = check(check_request(request), timeout=5)
                except grpc.RpcError as error:
                    self.failed += 1
                    self.wrong.append(f"{request}: {error}")
                    continue
                expected = OK if evaluate(POLICY, request).allowed else PERMISSION_DENIED
                if response.status.code != expected:
                    self.wrong.append(f"{request}: {response.status.code}, the engine {expected}")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_sent(self, more: int, timeout: float = 60.0) -> None:
        target = self.sent + more
        deadline = time.monotonic() + timeout
        while self.sent < target:
            assert self._thread.is_alive(), f"the traffic stopped at {self.sent} of {target}"
            assert time.monotonic() < deadline, f"{self.sent} of {target} sent"
            time.sleep(0.01)


def _until(condition: object, what: str, timeout: float = 60.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def served_with_store(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    metrics = free_port()
    with ExitStack() as stack:
        _, port = _serve(stack, redis_server, tmp_path / "d.jsonl", "--metrics-port", str(metrics))
        yield port, metrics, tmp_path


def test_the_store_stopped_under_checks_changes_no_answer_and_comes_back(
    redis_server: RedisServer, served_with_store: tuple[int, int, Path]
) -> None:
    port, metrics, directory = served_with_store
    with Traffic(port) as traffic:
        traffic.wait_sent(200)
        _until(lambda: _metric(metrics, "egress_authz_state_store_writes_total").get("new", 0) > 50, "writes")
        redis_server.stop()
        stopped_at = traffic.sent
        _until(
            lambda: sum(_metric(metrics, "egress_authz_state_store_errors_total").values()) >= 50, "errors"
        )
        traffic.wait_sent(200)
        redis_server.start()  # empty: it had no persistence
        _until(
            lambda: _metric(metrics, "egress_authz_state_store_up") == {"": 1.0}, "the store answers again"
        )
        back_at = traffic.sent  # from the next check on, every sighting goes to the store
        traffic.wait_sent(100)
    assert (traffic.failed, traffic.wrong) == (0, [])
    up = _metric(metrics, "egress_authz_state_store_up")
    assert up == {"": 1.0}
    records = _wait_records(directory, traffic.sent)
    assert len(records) == traffic.sent
    new_hosts = [r for r in records if str(r["host"]).endswith(".example.com")]
    assert all(r["first_seen"] for r in new_hosts)  # each a pair never seen: new, by the store or locally
    source = {int(str(r["host"])[1:].partition(".")[0]): r["first_seen_source"] for r in new_hosts}
    assert [source[i] for i in source if i < stopped_at].count("store") >= 50
    outage = [source[i] for i in source if stopped_at < i < back_at]
    assert outage.count("local") >= 50
    assert {source[i] for i in source if i > back_at + 1} == {"store"}  # they reach the store again
    keys = redis_server.scan()
    seen_after = [i for i in source if i > back_at + 1]
    assert all(any(f'"h{i}.example.com:{443 + i % 3000}"' in key for key in keys) for i in seen_after[:20])
