"""Faults under load (`make soak`): continuous checks through the real Envoy
gateway and straight to authz over gRPC, phase by phase, while faults come
and go; every answer is compared with what the policy says of its request.

    .venv/bin/python bench/soak.py --transport pyvoy [--workers 2] [--phase-seconds 15]
                                   [--pairs 200000] [--long | --quick] [--out bench/results/soak.md]

The lab (authz/gateway/lab.py: CA, SVIDs, `authz serve --workers N`, a real
Envoy with ext_authz, here answering 200 itself once authz allows) on
127.0.0.1. Load: workloads with their own SVIDs over keep-alive mTLS
connections to the gateway's HTTP listener, and CheckRequests straight to
authz over mTLS with the gateway's SVID (the lab's authz admits only the
gateway). Phases, in order:

- baseline: nothing wrong.
- reload: the policy files change, good and bad by turns (a good change
  flips one destination between allowed and denied); while a good change
  reaches the workers either version's answer is right, nothing else.
- kill: one worker process gets SIGKILL; the parent restarts it.
- pause: authz (parent and workers) is stopped with SIGSTOP for longer than
  Envoy's ext_authz timeout (250 ms), twice, then SIGCONT: Envoy answers 503.
- otlp-down: the OTLP collector authz exports spans to is gone (its port closed).
- decision-log: the decision log's directory is replaced by a file, so
  nothing can be written or rotated there (a read-only directory would do
  as well, but root, which this may run as, writes anyway).
- first-seen: --pairs distinct (identity, destination) pairs, each sent
  once, through authz's first-seen memory, bounded by --first-seen-capacity
  pairs a worker: memory must level off once each worker holds that many.
  By default 200,000 pairs into 20,000 (five times over in each of two
  workers: a Python gRPC client sends about 2,000 checks a second here, a
  million would take most of 10 minutes); --long sends 1,000,000 into
  authz's default 100,000.
- recovered: nothing wrong again.

Writes bench/results/soak.md (soak-grpcio.md for --transport grpcio,
soak-long.md for --long). Wrong decisions must be 0 (the exit status
is 1 otherwise) and the memory of the first-seen phase flat once the
capacity is reached.

--quick runs every phase and fault the same way with tiny counts (1 s
phases, 0.5 s pauses, 300 pairs into 100 a worker, a quarter of the load;
about 20 s) and writes its report to a new temporary directory (never
bench/results/), for a smoke test of the soak itself: its figures mean
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import grpc  # noqa: E402 - after the path the project lives on
from soak_load import (  # noqa: E402
    CHECK,
    Case,
    Collector,
    Oracle,
    Tallies,
    direct_user,
    distinct_pairs,
    flood,
    gateway_user,
    one_check,
    tree_rss,
)
from soak_report import write_report  # noqa: E402

from authz.core.compiled import CompiledPolicy  # noqa: E402
from authz.core.request import EgressRequest  # noqa: E402
from authz.gateway.lab import Lab, free_port  # noqa: E402
from authz.policy import load_policy  # noqa: E402
from authz.policy.compile import CompileOptions  # noqa: E402
from authz.testing import check_request  # noqa: E402

TD = "spiffe://prod.example.org"
CI, PAYMENTS, AGENT = (
    f"{TD}/ns/ci/sa/ci-runner",
    f"{TD}/ns/payments/sa/payments-api",
    f"{TD}/ns/agents/sa/retrieval-agent",
)
TOGGLER = f"{TD}/ns/soak/sa/toggler"
TOGGLED = "toggle.flip.example"  # allowed for TOGGLER in one good version of the policy, denied in the other
CASES = [
    Case(CI, "GET", "registry.npmjs.org", "/left-pad"),
    Case(CI, "GET", "gist.github.com", "/"),
    Case(PAYMENTS, "POST", "bank-gateway.example.com", "/v1/payments/settle"),
    Case(PAYMENTS, "GET", "bank-gateway.example.com", "/v1/payments/settle"),
    Case(AGENT, "POST", "vectors.internal.example.org", "/collections/docs/points/search"),
    Case(AGENT, "POST", "attacker.example.net", "/exfil"),
    Case(CI, "GET", "169.254.169.254", "/latest/meta-data/iam/security-credentials/"),
    Case(f"{TD}/ns/ci/sa/unknown-runner", "GET", "github.com", "/"),
    Case(TOGGLER, "GET", TOGGLED, "/"),
    Case(TOGGLER, "GET", "steady.soak.example", "/"),
]
SOAK_POLICY = """apiVersion: egress-authz/v1
kind: EgressPolicy
metadata: {name: soak, owner: team-soak, change_ref: CHG-SOAK}
spec:
  identities: ["spiffe://prod.example.org/ns/soak/*"]
  egress:
    - {id: soak, hosts: ["*.soak.example"], ports: [443], purpose: the soak's destinations}
"""
TOGGLE = """apiVersion: egress-authz/v1
kind: EgressPolicy
metadata: {{name: soak-toggle, owner: team-soak, change_ref: CHG-SOAK-{n}}}
spec:
  identities: ["{identity}"]
  egress:
    - {{id: flip, hosts: ["{host}"], ports: [443], purpose: flipped by the soak}}
"""
BAD = [
    "apiVersion: egress-authz/v1\nkind: EgressPolicy\nmetadata: {name: soak-toggle\n",  # YAML syntax
    "apiVersion: egress-authz/v1\nkind: EgressPolicy\nmetadata: {name: soak-toggle}\nspec: {}\n",  # schema
]


class LogWatch:
    """Lines of a growing log file, read as they come (from where it was last read)."""

    def __init__(
        self, path: Path, keep: Callable[[str], bool] = lambda line: "first_seen" not in line
    ) -> None:
        self.path, self.offset, self.lines, self.keep = path, 0, list[str](), keep

    def read(self) -> list[str]:
        """All the lines kept so far (the first-seen lines are a million: not those)."""
        self.lines += self.new()
        return self.lines

    def new(self) -> list[str]:
        """The lines kept that came since the last look."""
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [line for line in data[:end].decode(errors="replace").splitlines() if self.keep(line)]

    def count(self, text: str) -> int:
        return sum(text in line for line in self.read())

    async def wait_for(self, text: str, count: int, seconds: float = 60.0) -> float:
        """Seconds until ``count`` lines contain ``text``."""
        started = time.monotonic()
        while self.count(text) < count:
            if time.monotonic() - started > seconds:
                tail = "\n".join(f"  | {line}" for line in self.read()[-30:])
                raise TimeoutError(
                    f"no {count} x {text!r} in {self.path} after {seconds} s; it ends:\n{tail}"
                )
            await asyncio.sleep(0.05)
        return time.monotonic() - started


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 now (lab.free_port's range)."""
    for _ in range(100):
        first = free_port()
        with contextlib.ExitStack() as probes:
            try:
                for port in range(first + 1, first + count):
                    probes.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return first
    raise OSError(f"no {count} consecutive free ports found")


def losses(metrics_ports: list[int]) -> dict[str, float]:
    """Telemetry losses and first sightings, summed over the workers' metrics endpoints."""
    totals: dict[str, float] = {}
    for port in metrics_ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            continue  # a worker restarting
        for match in re.finditer(
            r'^egress_authz_spans_dropped_total\{cause="(\w+)"[^}]*\} (\S+)$', text, re.M
        ):
            totals[match[1]] = totals.get(match[1], 0) + float(match[2])
        for match in re.finditer(
            r"^egress_authz_first_seen_destinations_total(?:\{[^}]*\})? (\S+)$", text, re.M
        ):
            totals["first_seen"] = totals.get("first_seen", 0) + float(match[1])
    return totals


class Soak:
    def __init__(self, args: argparse.Namespace, directory: Path) -> None:
        self.args, self.directory = args, directory
        self.policies = directory / "policies"
        shutil.copytree(ROOT / "policies", self.policies)
        (self.policies / "soak.yaml").write_text(SOAK_POLICY)
        self.toggles = 0
        self._write("soak-toggle.yaml", self._toggle())
        self.oracle = Oracle([str(self.policies)])
        self.tallies = Tallies()
        self.collector = Collector(free_port())
        self.metrics_port = free_ports(args.workers)  # worker i serves its metrics on metrics_port + i
        self.log_dir = directory / "decision-logs"
        self.log_dir.mkdir()
        self.phases: list[dict[str, object]] = []
        self.lab = Lab(
            directory, self.policies, transport=args.transport, envoy_args=("--direct-response",),
            authz_args=("--workers", str(args.workers), "--decision-log", str(self.log_dir / "decisions.jsonl"),
                        "--decision-log-max-mb", "1", "--metrics-port", str(self.metrics_port),
                        "--first-seen-capacity", str(args.first_seen_capacity)),
            authz_environ={"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_INSECURE": "true",
                           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.collector.port}",
                           "OTEL_BSP_SCHEDULE_DELAY": "200"},
        )  # fmt: skip
        self.log = LogWatch(directory / "authz.log")
        # Envoy's access log, for why it answered what it did when it was neither 200 nor 403
        self.access = LogWatch(self.lab.access_log, lambda line: not re.search(r'"status": ?"?200\b', line))

    def _toggle(self) -> str:
        """The next good version: TOGGLED allowed, then not (another host instead), by turns."""
        self.toggles += 1
        host = TOGGLED if self.toggles % 2 else "elsewhere.flip.example"
        return TOGGLE.format(n=self.toggles, identity=TOGGLER, host=host)

    def _write(self, name: str, text: str) -> None:
        """Replaced whole, as a ConfigMap update does: never read half written."""
        temporary = self.policies / f".{name}.tmp"
        temporary.write_text(text)
        temporary.replace(self.policies / name)

    def _compile_with(self, toggle: str) -> CompiledPolicy:
        """The policy as it will be once ``toggle`` is written, compiled from a copy."""
        scratch = self.directory / "next-policies"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(self.policies, scratch, ignore=shutil.ignore_patterns(".*"))
        (scratch / "soak-toggle.yaml").write_text(toggle)
        return load_policy([str(scratch)], CompileOptions())[1]

    @property
    def authz(self) -> int:
        return self.lab.pid("authz")

    async def run(self) -> None:
        await self.collector.start()
        await asyncio.to_thread(self.lab.start)
        try:
            await self._run()
        finally:
            await asyncio.to_thread(self.lab.stop)
            await self.collector.stop()

    async def _run(self) -> None:
        args, workers = self.args, self.args.workers
        await self.log.wait_for(f"all {workers} workers serving", 1)
        contexts = {case.identity: self.lab.client_context(case.identity) for case in CASES}
        target = f"127.0.0.1:{self.lab.ports['authz']}"
        # authz serves the lab's gateway over mTLS and admits only its SVID: the direct client presents it
        credentials = self.lab.authz_credentials()
        channels = [grpc.aio.secure_channel(target, credentials, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(4)]  # fmt: skip
        direct = [(case.request(), check_request(case.request()).SerializeToString()) for case in CASES]
        await self._calibrate(channels[0], direct)
        stop = asyncio.Event()
        users = [gateway_user(self.lab.ports["http"], contexts.__getitem__, CASES, self.oracle, self.tallies,
                              args.gateway_rate / 4, stop, offset=3 * n) for n in range(4)]  # fmt: skip
        users += [direct_user(channels[n], direct, self.oracle, self.tallies, args.direct_rate / 4, stop, offset=5 * n)
                  for n in range(4)]  # fmt: skip
        load = asyncio.gather(*users)
        seconds = args.phase_seconds
        try:
            for name, fault in [
                ("baseline", lambda: asyncio.sleep(seconds)),
                ("reload", self._reloads),
                ("kill", self._kill),
                ("pause", self._pause),
                ("otlp-down", self._otlp_down),
                ("decision-log", self._decision_log_gone),
                ("first-seen", lambda: self._first_seen(channels)),
                ("recovered", lambda: asyncio.sleep(seconds)),
            ]:
                await self._phase(name, fault)
        finally:
            stop.set()
            await load
            for channel in channels:
                await channel.close()

    async def _calibrate(self, channel: grpc.aio.Channel, direct: list[tuple[EgressRequest, bytes]]) -> None:
        """Each request answered once, before any fault: the soak's model of a request must be
        authz's. A check that gets no answer (the first connection's handshake on a busy
        machine can outlast the 1 s deadline) is sent again, up to 10 times."""
        self.tallies.phase = "calibration"
        check: Any = channel.unary_unary(CHECK)
        tally = self.tallies("direct")
        for request, payload in direct:
            answered = tally.answered
            for _ in range(10):
                await one_check(check, request, payload, self.oracle, tally, cache=True)
                if tally.answered > answered:
                    break
                await asyncio.sleep(0.5)
        if tally.wrong or tally.answered != len(direct):
            raise SystemExit(f"calibration failed: {tally}")

    async def _phase(self, name: str, fault: Callable[[], Awaitable[str | None]]) -> None:
        ports = [self.metrics_port + i for i in range(self.args.workers)]
        before = {"rss": tree_rss(self.authz), "losses": losses(ports), "spans": self.collector.spans}
        print(f"{time.strftime('%H:%M:%S')} phase {name}", flush=True)
        self.tallies.phase = name
        started = time.monotonic()
        note = await fault()
        after = {"rss": tree_rss(self.authz), "losses": losses(ports), "spans": self.collector.spans,
                 "load": os.getloadavg()[0], "envoy": await asyncio.to_thread(self._envoy_answers)}  # fmt: skip
        self.phases.append({"name": name, "seconds": time.monotonic() - started, "before": before,
                            "after": after, "note": note or ""})  # fmt: skip

    def _envoy_answers(self) -> dict[str, int]:
        """Envoy's answers other than 200 and 403 since the last look, by status and details."""
        counted: dict[str, int] = {}
        for line in self.access.new():
            record = json.loads(line)
            if str(record.get("status")) != "403":
                key = f"{record.get('status')} {record.get('details')}"
                counted[key] = counted.get(key, 0) + 1
        return counted

    @property
    def beat(self) -> float:
        """Traffic's time under each state a fault sets up: 1 s, less in phases shorter than 2 s (--quick)."""
        return min(1.0, self.args.phase_seconds / 2)

    async def _reloads(self) -> str:
        workers, deadline = self.args.workers, time.monotonic() + self.args.phase_seconds
        good = bad = 0
        slowest = 0.0
        while time.monotonic() < deadline:
            applied = self.log.count("policy reloaded")
            text = self._toggle()
            self.oracle.begin(await asyncio.to_thread(self._compile_with, text))  # before any worker has it
            self._write("soak-toggle.yaml", text)
            slowest = max(slowest, await self.log.wait_for("policy reloaded", applied + workers))
            self.oracle.settle()
            good += 1
            await asyncio.sleep(self.beat)
            rejected = self.log.count("policy change rejected")
            current = (self.policies / "soak-toggle.yaml").read_text()
            self._write("soak-toggle.yaml", BAD[bad % len(BAD)])
            await self.log.wait_for("policy change rejected", rejected + workers)
            bad += 1
            await asyncio.sleep(self.beat)
            self._write("soak-toggle.yaml", current)  # the good version back: nothing changes
            await asyncio.sleep(self.beat / 2)
        return f"{good} good changes (each on every worker within {slowest:.2f} s), {bad} rejected"

    async def _kill(self) -> str:
        line = [line for line in self.log.read() if "workers serving (pids" in line][-1]
        victim = int(re.findall(r"(\d+)(?=[,)])", line.split("(pids")[1])[0])
        again = self.log.count("serving again")
        started = time.monotonic()
        await asyncio.sleep(2 * self.beat)
        os.kill(victim, signal.SIGKILL)
        back = await self.log.wait_for("serving again", again + 1)
        await asyncio.sleep(max(0.0, self.args.phase_seconds - (time.monotonic() - started)))
        return f"worker pid {victim} killed (SIGKILL); a new one served {back:.1f} s later"

    async def _pause(self) -> str:
        pauses = 2
        for _ in range(pauses):
            await asyncio.sleep(2 * self.beat)
            os.killpg(self.authz, signal.SIGSTOP)
            try:
                await asyncio.sleep(self.args.pause_seconds)
            finally:
                os.killpg(self.authz, signal.SIGCONT)
        await asyncio.sleep(
            max(0.0, self.args.phase_seconds - pauses * (2 * self.beat + self.args.pause_seconds))
        )
        return f"authz stopped (SIGSTOP) {pauses} x {self.args.pause_seconds:g} s, then SIGCONT"

    async def _otlp_down(self) -> str:
        await self.collector.stop()
        try:
            await asyncio.sleep(self.args.phase_seconds)
        finally:
            await self.collector.start()
        return f"OTLP collector (127.0.0.1:{self.collector.port}) gone for the phase"

    async def _decision_log_gone(self) -> str:
        away = self.log_dir.with_name("decision-logs.away")
        self.log_dir.rename(away)
        self.log_dir.write_text("not a directory")
        try:
            await asyncio.sleep(self.args.phase_seconds)
        finally:
            self.log_dir.unlink()
            away.rename(self.log_dir)
        return "the decision log's directory replaced by a file (ENOTDIR) for the phase"

    async def _first_seen(self, channels: list[grpc.aio.Channel]) -> str:
        """The flood, with the authz tree's memory each tenth of the way."""
        total, samples = self.args.pairs, list[str]()

        async def sample() -> None:
            for tenth in range(1, 11):
                while self.tallies("first-seen flood").sent < total * tenth // 10:
                    await asyncio.sleep(0.2)
                samples.append(f"{total * tenth // 10:,}: {tree_rss(self.authz) / 2**20:.0f}")

        sampler = asyncio.create_task(sample())
        await flood(channels, distinct_pairs(total), self.oracle, self.tallies, self.args.concurrency)
        await asyncio.wait_for(sampler, 10)
        return "authz RSS (MiB) after N pairs sent: " + "; ".join(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=["grpcio", "pyvoy"], required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--phase-seconds", type=float, default=15.0)
    parser.add_argument("--pause-seconds", type=float, default=2.0, help="each SIGSTOP (Envoy waits 0.25 s)")
    parser.add_argument(
        "--pairs", type=int, help="distinct pairs in the first-seen phase (200,000; --long 1,000,000)"
    )
    parser.add_argument(
        "--first-seen-capacity",
        type=int,
        help="authz serve's, per worker (20,000; --long 100,000, its default)",
    )
    parser.add_argument("--gateway-rate", type=float, default=160.0, help="requests a second through Envoy")
    parser.add_argument("--direct-rate", type=float, default=400.0, help="checks a second straight to authz")
    parser.add_argument("--concurrency", type=int, default=32, help="first-seen checks in flight")
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--long",
        action="store_true",
        help="60 s phases and a million pairs into the default capacity (~20 min)",
    )
    length.add_argument(
        "--quick",
        action="store_true",
        help="every phase with tiny counts (~20 s), the report in a temporary directory: a smoke test",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="the report (bench/results/soak.md, soak-grpcio.md, soak-long.md; --quick: a temporary file)",
    )
    args = parser.parse_args()
    if args.long:
        args.phase_seconds = max(args.phase_seconds, 60.0)
    if args.quick:
        args.phase_seconds, args.pause_seconds = 1.0, 0.5  # a pause still outlasts Envoy's 250 ms
        args.gateway_rate, args.direct_rate, args.concurrency = 40.0, 100.0, 8
        args.pairs, args.first_seen_capacity = args.pairs or 300, args.first_seen_capacity or 100
        args.out = args.out or Path(tempfile.mkdtemp(prefix="egress-authz-soak-quick-")) / "soak.md"
    args.pairs = args.pairs or (1_000_000 if args.long else 200_000)
    args.first_seen_capacity = args.first_seen_capacity or (100_000 if args.long else 20_000)
    # soak.md; soak-grpcio.md, soak-long.md for the other transport and the long run
    suffix = ("-grpcio" if args.transport == "grpcio" else "") + ("-long" if args.long else "")
    args.out = args.out or ROOT / "bench" / "results" / f"soak{suffix}.md"
    command = ".venv/bin/python bench/soak.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="egress-authz-soak-") as directory:
        soak = Soak(args, Path(directory))
        started = time.monotonic()
        asyncio.run(soak.run())
        wrong = write_report(args, command, soak.phases, soak.tallies, time.monotonic() - started)
    print(args.out.read_text())
    print(f"report: {args.out}")
    if wrong:
        raise SystemExit(f"{wrong} wrong decisions: the soak failed")


if __name__ == "__main__":
    main()
