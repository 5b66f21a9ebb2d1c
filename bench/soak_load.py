"""The soak's load and its judge (bench/soak.py runs the phases).

- ``Oracle``: what the policy says of each request (the engine on the
  compiled policy files), over every version that may be serving while a
  reload is under way.
- ``Tally``: per phase and path, checks sent and answered, errors by kind,
  wrong decisions (and how many of them were allows), latencies.
- ``gateway_user``: HTTP/1.1 keep-alive requests over mTLS, as a workload,
  to the real Envoy gateway's HTTP listener (answering 200 itself when
  ext_authz allows: ``--direct-response``).
- ``direct_user``: CheckRequests straight to authz over gRPC.
- ``Collector``: an OTLP trace collector that counts spans, and can go away.
- ``tree_rss``: the resident memory of a process and all its descendants.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from authz.core.compiled import CompiledPolicy
from authz.core.engine import evaluate
from authz.core.request import EgressRequest
from authz.ext_authz.check import SERVICE_NAME
from authz.ext_authz.wire.ext_authz_pb2 import CheckResponse
from authz.gateway.lab import ZONE
from authz.policy import load_policy
from authz.policy.compile import CompileOptions
from authz.testing import check_request

CHECK = f"/{SERVICE_NAME}/Check"
TIMEOUT_REASON = "TIMEOUT"  # authz's own budget ran out: a deny, fail closed, not a policy decision
Answer = tuple[str, str]  # (verdict, reason)


class Oracle:
    """What the policy files say, as authz compiles them; ``in_force`` holds every
    version that may be serving (two while a reload reaches the workers)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.in_force: tuple[CompiledPolicy, ...] = (self.compile(),)
        self._cache: dict[tuple[str, EgressRequest], Answer] = {}

    def compile(self) -> CompiledPolicy:
        return load_policy(self.paths, CompileOptions())[1]

    def begin(self, policy: CompiledPolicy) -> None:
        self.in_force = (self.in_force[-1], policy)

    def settle(self) -> None:
        self.in_force = self.in_force[-1:]

    def answer(self, policy: CompiledPolicy, request: EgressRequest, *, cache: bool = True) -> Answer:
        key = (policy.version, request)
        known = self._cache.get(key) if cache else None
        if known is None:
            decision = evaluate(policy, request)
            known = (decision.verdict.value, decision.reason.value)
            if cache:
                self._cache[key] = known
        return known

    def acceptable(
        self, policies: tuple[CompiledPolicy, ...], request: EgressRequest, *, cache: bool = True
    ) -> set[Answer]:
        return {self.answer(policy, request, cache=cache) for policy in policies}


def percentile(values: array[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    wrong: int = 0
    wrong_allows: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    examples: list[str] = field(default_factory=list)  # the first wrong decisions, for the report

    def judge(self, got: Answer, acceptable: set[Answer], seconds: float, what: str) -> None:
        """One answer: on time or not, right or wrong."""
        self.answered += 1
        self.latencies.append(seconds)
        if got[1] == TIMEOUT_REASON:
            self.errors["deny TIMEOUT (fail closed)"] += 1
        elif got not in acceptable:
            self.wrong += 1
            self.wrong_allows += got[0] == "allow"
            if len(self.examples) < 5:
                self.examples.append(f"{what}: got {got}, policy says {sorted(acceptable)}")


class Tallies:
    """The tally of the current phase for each path ("gateway", "direct", ...)."""

    def __init__(self) -> None:
        self.phase = "starting"
        self.by_phase: dict[str, dict[str, Tally]] = {}

    def __call__(self, path: str) -> Tally:
        return self.by_phase.setdefault(self.phase, {}).setdefault(path, Tally())


@dataclass(frozen=True)
class Case:
    identity: str
    method: str
    host: str
    path: str

    def request(self) -> EgressRequest:
        """What authz makes of this request through the gateway's HTTP listener (mTLS, so https)."""
        return EgressRequest(self.identity, self.host, None, None, self.method, self.path, ZONE, "https")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bool]:
    """Status, headers, and whether the connection may be used again (the body is read)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, headers.get("connection", "").lower() != "close"


class _Connections:
    """One keep-alive mTLS connection per identity (its SVID is the client certificate)."""

    def __init__(self, port: int, context_for: Callable[[str], ssl.SSLContext]) -> None:
        self.port, self.context_for = port, context_for
        self.open: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def get(self, identity: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if identity not in self.open:
            self.open[identity] = await asyncio.open_connection(
                "127.0.0.1", self.port, ssl=self.context_for(identity), server_hostname="127.0.0.1"
            )
        return self.open[identity]

    def drop(self, identity: str) -> None:
        connection = self.open.pop(identity, None)
        if connection is not None:
            connection[1].close()

    def close(self) -> None:
        for identity in list(self.open):
            self.drop(identity)


async def gateway_user(
    port: int, context_for: Callable[[str], ssl.SSLContext], cases: list[Case], oracle: Oracle,
    tallies: Tallies, rate: float, stop: asyncio.Event, offset: int = 0,
) -> None:  # fmt: skip
    """Requests through the gateway at ``rate`` a second, cycling through ``cases``, until ``stop``."""
    connections = _Connections(port, context_for)
    interval, turn = 1.0 / rate, offset
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            case = cases[turn % len(cases)]
            turn += 1
            tally = tallies("gateway")
            tally.sent += 1
            before, started = oracle.in_force, time.perf_counter()
            try:
                reader, writer = await connections.get(case.identity)
                writer.write(
                    f"{case.method} {case.path} HTTP/1.1\r\nHost: {case.host}\r\nContent-Length: 0\r\n\r\n".encode()
                )
                status, headers, reusable = await asyncio.wait_for(_read_response(reader), 10)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ssl.SSLError) as error:
                connections.drop(case.identity)
                tally.errors[type(error).__name__] += 1
            else:
                if not reusable:
                    connections.drop(case.identity)
                seconds = time.perf_counter() - started
                if status == 200:
                    got: Answer | None = ("allow", "ALLOWED")
                elif status == 403 and "x-egress-reason" in headers:
                    got = ("deny", headers["x-egress-reason"])
                else:
                    got = None
                    tally.errors[f"HTTP {status}"] += 1
                if got is not None:
                    acceptable = oracle.acceptable(before + oracle.in_force, case.request())
                    if got[0] == "allow":  # Envoy's 200 carries no reason: judge the verdict
                        acceptable = (
                            {("allow", "ALLOWED")} if any(v == "allow" for v, _ in acceptable) else acceptable
                        )
                    tally.judge(got, acceptable, seconds, f"{case}")
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - 1.0)  # after a stall, do not burst to catch up
    finally:
        connections.close()


FLOOD_PREFIX = "spiffe://prod.example.org/ns/soak/sa/"
_ID_MARK, _HOST_MARK = b"wXXXXXXX", b"dYYYYYYY.soak.example"


def distinct_pairs(count: int) -> Iterator[tuple[EgressRequest, bytes]]:
    """``count`` CheckRequests (the SNI listener's), each a new identity and a new
    destination; one in ten to a destination the soak policy does not allow.
    Built by patching fixed-width names into one serialized request: a million
    protobuf builds would cost the load generator more than authz."""
    template = check_request(
        EgressRequest(FLOOD_PREFIX + _ID_MARK.decode(), None, 443, _HOST_MARK.decode(), zone=ZONE)
    ).SerializeToString()
    for index in range(count):
        domain = "deny.example" if index % 10 == 0 else "soak.example"
        identity, host = f"w{index:07d}", f"d{index:07d}.{domain}"
        payload = template.replace(_ID_MARK, identity.encode()).replace(_HOST_MARK, host.encode())
        yield EgressRequest(FLOOD_PREFIX + identity, None, 443, host, None, None, ZONE, None), payload


async def flood(
    channels: list[grpc.aio.Channel], pairs: Iterator[tuple[EgressRequest, bytes]], oracle: Oracle,
    tallies: Tallies, concurrency: int,
) -> None:  # fmt: skip
    """Every request of ``pairs`` once, ``concurrency`` at a time, as fast as authz answers."""
    checks: list[Any] = [channel.unary_unary(CHECK) for channel in channels]

    async def worker(number: int) -> None:
        check = checks[number % len(checks)]
        for request, payload in pairs:  # one iterator shared by all: each pair is sent once
            await one_check(check, request, payload, oracle, tallies("first-seen flood"), cache=False)

    await asyncio.gather(*(worker(number) for number in range(concurrency)))


def parse_check_response(data: bytes) -> Answer:
    response = CheckResponse.FromString(data)
    reason = response.dynamic_metadata.fields["reason"].string_value
    return ("allow" if response.status.code == 0 else "deny", reason)


async def direct_user(
    channel: grpc.aio.Channel, requests: list[tuple[EgressRequest, bytes]], oracle: Oracle,
    tallies: Tallies, rate: float, stop: asyncio.Event, path: str = "direct", offset: int = 0,
) -> None:  # fmt: skip
    """CheckRequests straight to authz at ``rate`` a second, cycling through ``requests``."""
    check: Any = channel.unary_unary(CHECK)
    interval, turn = 1.0 / rate, offset
    next_at = time.monotonic()
    while not stop.is_set():
        request, payload = requests[turn % len(requests)]
        turn += 1
        await one_check(check, request, payload, oracle, tallies(path), cache=True)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at, time.monotonic() - 1.0)


async def one_check(
    check: Any, request: EgressRequest, payload: bytes, oracle: Oracle, tally: Tally, *, cache: bool
) -> None:
    tally.sent += 1
    before, started = oracle.in_force, time.perf_counter()
    try:
        reply = await check(payload, timeout=1.0)
    except grpc.aio.AioRpcError as error:
        tally.errors[error.code().name] += 1
        return
    got = parse_check_response(reply)
    tally.judge(got, oracle.acceptable(before + oracle.in_force, request, cache=cache),
                time.perf_counter() - started, f"{request}")  # fmt: skip


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    async def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (the service's name)
        self.collector.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class Collector:
    """An OTLP/gRPC trace collector on 127.0.0.1:``port`` that counts the spans it receives."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.spans = 0
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), self.server)  # type: ignore[no-untyped-call]
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self.server.start()

    async def stop(self) -> None:
        """Gone: the port is closed (connections refused) until ``start``."""
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


def tree_rss(root: int) -> int:
    """Bytes resident in ``root`` and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    total = 0
    for pid in tree:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total
