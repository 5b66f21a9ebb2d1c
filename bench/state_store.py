"""Sustained new pairs with a state store: does writing first sightings to Redis
move the checks' latency or their CPU?

    .venv/bin/python bench/state_store.py [--seconds 30] [--rate 1500] [--new-rate 1000] [--rounds 2]

Two `authz serve --transport pyvoy --workers 1` (default telemetry), one with
`--state-store` on a real redis-server on 127.0.0.1 and one without, get the
bench's realistic CheckRequest (1.7 KB, HTTP, allowed) at a fixed total rate,
open loop (each check timed from when it was due, so a stall is not hidden),
in three kinds of phase that alternate: with the store, every check to one
of a few known pairs; with the store, ``--new-rate`` checks a second to a
destination never seen before (allowed by a wildcard rule added to a copy
of the example policies, so that the phases differ only in first sightings);
and the same new pairs without a store. Per phase: checks, failures,
p50/p99/p99.9 from due to answer, server CPU per check, and the store's
writes and errors from authz's metrics. The machine is shared: the phases
alternate so that its noise falls on all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import cpu_seconds  # noqa: E402 - bench/ is this script's directory
from redis_store import command, redis_server  # noqa: E402
from server import METHOD, _check_request, _wait_ready  # noqa: E402

from authz.gateway.lab import free_port  # noqa: E402

MARK = "zXXXXXXX.bench.example"  # fixed width: patched into the serialized request


def _policies(directory: Path) -> Path:
    """The example policies, ci-runner also allowed to *.bench.example:443."""
    policies = directory / "policies"
    shutil.copytree(ROOT / "policies", policies)
    ci = policies / "ci-runner.yaml"
    ci.write_text(ci.read_text() + "    - id: bench\n      hosts: ['*.bench.example']\n      ports: [443]\n"
                  "      purpose: the state store benchmark's new destinations\n")  # fmt: skip
    return policies


def _template() -> bytes:
    """The bench's request to MARK (set through protobuf: a length changes; later names keep MARK's)."""
    from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest

    check = CheckRequest.FromString(_check_request())
    check.attributes.tls_session.sni = MARK
    check.attributes.request.http.host = MARK
    check.attributes.request.http.headers[":authority"] = MARK
    payload = check.SerializeToString()
    assert payload.count(MARK.encode()) == 3
    assert b"registry.npmjs.org" not in payload
    return payload


def _host(payload: bytes, name: str) -> bytes:
    assert len(name) == len(MARK)
    return payload.replace(MARK.encode(), name.encode())


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(
            r'egress_authz_state_store_(writes|errors)_total\{.*(?:result|cause)="(\w+)".*\} (\S+)', line
        )
        if match:
            found[f"{match[1]}.{match[2]}"] = float(match[3])
    return found


async def _phase(
    port: int, template: bytes, seconds: float, rate: int, new_rate: int, start: int
) -> dict[str, Any]:
    """``rate`` checks a second for ``seconds``, ``new_rate`` of them new pairs (numbered from ``start``)."""
    known = [_host(template, f"known{index:03d}.bench.example") for index in range(8)]
    latencies: list[float] = []
    failed = 0
    every_new = rate / new_rate if new_rate else None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        tasks: set[asyncio.Task[None]] = set()

        async def one(payload: bytes, due: float) -> None:
            nonlocal failed
            try:
                await call(payload, timeout=5)
            except grpc.aio.AioRpcError:
                failed += 1
                return
            latencies.append(time.perf_counter() - due)

        began = time.perf_counter()
        total = int(seconds * rate)
        new = start
        for index in range(total):
            due = began + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if every_new is not None and int(index / every_new) != int((index - 1) / every_new):
                payload = _host(template, f"n{new:07d}.bench.example")
                new += 1
            else:
                payload = known[index % len(known)]
            task = asyncio.create_task(one(payload, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    latencies.sort()
    return {
        "sent": total, "failed": failed, "new": new - start,
        "p50": latencies[len(latencies) // 2] * 1e3, "p99": latencies[int(len(latencies) * 0.99)] * 1e3,
        "p999": latencies[int(len(latencies) * 0.999)] * 1e3, "elapsed": time.perf_counter() - began,
    }  # fmt: skip


def _start(policies: Path, port: int, metrics: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "authz", "serve", "--policy", str(policies), "--transport", "pyvoy",
         "--listen", f"127.0.0.1:{port}", "--metrics-port", str(metrics), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "console"},
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="per phase")
    parser.add_argument("--rate", type=int, default=1500, help="checks a second in every phase")
    parser.add_argument(
        "--new-rate", type=int, default=1000, help="new pairs a second in the new-pair phases"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three phases, alternating")
    args = parser.parse_args()
    template = _template()
    new = f"{args.new_rate:,} new pairs/s"
    phases = [("known pairs, --state-store", "store", 0), (f"{new}, --state-store", "store", args.new_rate),
              (f"{new}, no store", "none", args.new_rate)]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, redis_server() as url:
        policies = _policies(Path(tmp))
        ports = {name: (free_port(), free_port()) for name in ("store", "none")}
        servers = {
            "store": _start(policies, *ports["store"], "--state-store", url),
            "none": _start(policies, *ports["none"]),
        }
        rows: list[tuple[str, dict[str, Any]]] = []
        try:
            for port, _ in ports.values():
                _wait_ready(port, _host(template, "known000.bench.example"))
                asyncio.run(_phase(port, template, 2, 500, 0, 0))  # warm-up: the known pairs known
            new_from = 0
            for _ in range(args.rounds):
                for name, server, new_rate in phases:
                    port, metrics = ports[server]
                    before, cpu = _metrics(metrics), cpu_seconds(servers[server].pid)
                    row = asyncio.run(_phase(port, template, args.seconds, args.rate, new_rate, new_from))
                    time.sleep(1)  # the store's last answers of the phase
                    row["cpu_us"] = (cpu_seconds(servers[server].pid) - cpu) / row["sent"] * 1e6
                    after = _metrics(metrics)
                    row["store"] = {
                        k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)
                    }
                    new_from += row["new"]
                    rows.append((name, row))
                    print(f"{name}: {row}", flush=True)
            pairs = command(url, "DBSIZE")
        finally:
            for server in servers.values():
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)
    print(f"\n`authz serve --transport pyvoy --workers 1`, with and without `--state-store` (a real redis-server),"
          f" default telemetry; {args.rate:,} checks/s open loop, {args.seconds:g} s a phase, the phases alternating;"
          f" pairs in the store at the end: {pairs}")  # fmt: skip
    print("| phase | checks | failed | p50 ms | p99 ms | p99.9 ms | µs CPU / check | store writes (errors) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, row in rows:
        store = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(row["store"].items())) or "none"
        print(f"| {name} | {row['sent']:,} | {row['failed']} | {row['p50']:.2f} | {row['p99']:.2f} |"
              f" {row['p999']:.2f} | {row['cpu_us']:.0f} | {store} |")  # fmt: skip
    for kind, _, _ in phases:
        p99 = [row["p99"] for name, row in rows if name == kind]
        cpu = [row["cpu_us"] for name, row in rows if name == kind]
        print(f"{kind}: p99 median {statistics.median(p99):.2f} ms ({', '.join(f'{v:.2f}' for v in p99)});"
              f" CPU median {statistics.median(cpu):.0f} µs a check")  # fmt: skip
    print("load average (1, 5, 15 min) at the end: " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
