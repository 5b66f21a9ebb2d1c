"""Server benchmark: `authz serve` on each transport against a trivial grpc.aio server, through h2load.

    .venv/bin/python bench/server.py [--seconds 8] [--runs 1] [--quick]

Needs h2load (Debian: apt-get install nghttp2-client). Sends a realistic
CheckRequest (the HTTP filter's, with peer certificate, 20 headers, zone and
SNI: about 1.7 KB) that the example policies allow, at concurrency 1 (-c1 -m1)
and 64 (-c4 -m16), to each server of SERVERS in turn, all in one run: the
trivial server (1 process), `authz serve --workers 1` on grpcio and on pyvoy
with default telemetry (spans of every deny and 1% of allows, exported to
/dev/null) and with telemetry off, and `--workers 2`. Latency percentiles
come from h2load's per-request log; the servers' CPU time from /proc (the
whole process tree), since h2load shares the machine's cores with them.
`--telemetry` compares telemetry settings on grpcio instead. `--shadow`
compares `authz serve` (default telemetry, `--transport`) without a shadow
policy, with one that agrees with the served policy on the bench's request,
and with one that disagrees on every check (each then a span), alternating
within each run; and measures in-process what the shadow adds on the check
and after the answer. Prints its table (nothing is written).

--quick is a smoke test of the benchmark, not a measurement (about 10 s):
one run, 0.5 s per load level after 0.2 s of warm-up, on the trivial
server and `authz serve --transport pyvoy` with telemetry off and on (the
README's table), whatever --seconds, --runs and --only say.

`--state-store` compares `authz serve` (default
telemetry, `--transport`) without and with `--state-store` on a real
redis-server (apt-get install redis-server), alternating within each run:
the bench's one pair is known after its first check, so this is the cost of
a store when every pair is known.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import cpu_seconds  # noqa: E402 - bench/ is this script's directory

from authz.gateway.lab import free_port  # noqa: E402 - after the path it lives on

METHOD = "/envoy.service.auth.v3.Authorization/Check"
LOADS = {"c1": ["-c1", "-m1"], "c64": ["-c4", "-m16"]}


def _check_request() -> bytes:
    from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest

    check = CheckRequest()
    attributes = check.attributes
    attributes.source.principal = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
    attributes.source.certificate = (
        "-----BEGIN%20CERTIFICATE-----%0A" + "MIIB" * 180 + "%0A-----END%20CERTIFICATE-----%0A"
    )
    attributes.source.address.socket_address.address = "10.12.3.4"
    attributes.source.address.socket_address.port_value = 53124
    attributes.destination.address.socket_address.address = "10.12.0.2"
    attributes.destination.address.socket_address.port_value = 443
    attributes.context_extensions["zone"] = "eu-west-prod"
    attributes.tls_session.sni = "registry.npmjs.org"
    http = attributes.request.http
    http.id = "14795958216356412161"
    http.method, http.path, http.host, http.scheme, http.protocol = (
        "GET",
        "/left-pad/-/left-pad-1.3.0.tgz",
        "registry.npmjs.org",
        "https",
        "HTTP/1.1",
    )
    headers = {
        ":authority": "registry.npmjs.org",
        ":method": "GET",
        ":path": "/left-pad/-/left-pad-1.3.0.tgz",
        ":scheme": "https",
        "accept": "application/octet-stream",
        "accept-encoding": "gzip, deflate, br",
        "user-agent": "npm/10.8.2 node/v20.17.0 linux x64 workspaces/false ci/github-actions",
        "npm-command": "install",
        "npm-session": "a1b2c3d4e5f60718",
        "x-request-id": "8f6a7c1e-2b3d-4e5f-9a0b-1c2d3e4f5a6b",
        "x-forwarded-proto": "https",
        "x-envoy-internal": "true",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",  # not sampled by the caller
        "tracestate": "congo=t61rcWkgMzE",
        "x-b3-sampled": "1",
        "pragma": "no-cache",
        "cache-control": "no-cache",
        "referer": "install left-pad",
        "x-forwarded-for": "10.12.3.4",
        "x-envoy-expected-rq-timeout-ms": "15000",
    }
    http.headers.update(headers)
    return check.SerializeToString()


def _wait_ready(port: int, payload: bytes) -> None:
    """Until the server answers the bench's request (an allow, for authz)."""
    import grpc

    deadline = time.monotonic() + 30
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        while True:
            try:
                reply: bytes = call(payload, timeout=1)
                if reply.startswith(b"\x0a\x00") or b"ALLOWED_BY_RULE" in reply:
                    return
                raise SystemExit(f"unexpected response from port {port}: {reply[:80]!r}")
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _h2load(port: int, frame: Path, load: list[str], seconds: float, warm_up: float) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        out = subprocess.run(
            ["h2load", *load, "-t1", f"-D{round(seconds * 1000)}ms", f"--warm-up-time={round(warm_up * 1000)}ms",
             f"--data={frame}",
             "-H", "content-type: application/grpc", "-H", "te: trailers", f"--log-file={log.name}",
             f"http://127.0.0.1:{port}{METHOD}"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        durations = sorted(
            int(line.split("\t")[2]) for line in Path(log.name).read_text().splitlines() if line
        )
    match = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    failed = re.search(r"(\d+) failed", out)
    if match is None or durations == []:
        raise SystemExit(out)
    return {
        "rps": float(match.group(1)),
        "failed": float(failed.group(1)) if failed else 0.0,
        "p50_ms": statistics.median(durations) / 1000,
        "p99_ms": durations[int(len(durations) * 0.99)] / 1000,
    }


def _run(
    name: str,
    command: list[str],
    port: int,
    frame: Path,
    payload: bytes,
    seconds: float,
    environ: dict[str, str] | None = None,
    warm_up: float = 1.0,
) -> dict[str, Any]:
    env = {**os.environ, **environ} if environ is not None else None
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env
    )
    try:
        _wait_ready(port, payload)
        row: dict[str, Any] = {"name": name}
        for load, args in LOADS.items():
            cpu_before = cpu_seconds(server.pid)
            row[load] = _h2load(port, frame, args, seconds, warm_up)
            cpu = cpu_seconds(server.pid) - cpu_before
            row[load]["server_cores"] = cpu / (seconds + warm_up)  # h2load ran seconds plus the warm-up
        return row
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


TELEMETRY = {
    "telemetry off (OTEL_SDK_DISABLED=true)": {"OTEL_SDK_DISABLED": "true"},
    "default (1% of allows, every deny)": {"OTEL_TRACES_EXPORTER": "console"},
    "every check recorded": {"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "always_on"},
}


def _telemetry(frame: Path, payload: bytes, seconds: float, serve: list[str]) -> None:
    """One process each, spans printed by the console exporter to /dev/null."""
    rows = []
    for name, environ in TELEMETRY.items():
        port = free_port()
        row = _run(name, [*serve, "--listen", f"127.0.0.1:{port}"], port, frame, payload, seconds, environ)
        rows.append((name, row["c64"]["rps"], row["c1"]["p50_ms"]))
    print(f"telemetry cost, `authz serve --workers 1`, allowed CheckRequest, {seconds:g} s per level")
    print(f"{'settings':<42} {'c64 req/s':>10} {'c1 p50 ms':>10}")
    for name, rps, p50 in rows:
        print(f"{name:<42} {rps:>10.0f} {p50:>10.2f}")
    off = rows[0][1]
    print(f"default / off: {rows[1][1] / off:.0%}; every check recorded / off: {rows[2][1] / off:.0%}")


def _shadow_candidates(policies: Path, directory: Path) -> tuple[Path, Path]:
    """Copies of the policies: one the same, one without the bench request's host (every check disagrees)."""
    agrees, disagrees = directory / "agrees", directory / "disagrees"
    shutil.copytree(policies, agrees)
    shutil.copytree(policies, disagrees)
    ci = disagrees / "ci-runner.yaml"
    ci.write_text(ci.read_text().replace("hosts: [registry.npmjs.org, npmjs.org]", "hosts: [npmjs.org]"))
    return agrees, disagrees


def _in_process(payload: bytes, policies: Path, candidate: Path, checks: int = 20_000) -> None:
    """Time per check of CheckService.check (the check path) and of its
    ``after_response`` (the telemetry's turn once the answer is sent, as a
    transport calls them), without and with the shadow policy."""
    from authz.core.engine import evaluate
    from authz.ext_authz.attributes import GatewaySettings, egress_request
    from authz.ext_authz.check import CheckService
    from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest
    from authz.policy import load_policy
    from authz.telemetry import Telemetry, TelemetryConfig

    served, shadow = load_policy([policies])[1], load_policy([candidate])[1]
    best = {None: [float("inf")] * 2, shadow: [float("inf")] * 2}  # on the check, after the answer
    for _ in range(5):  # alternating: a shared machine's noise falls on both
        for policy, times in best.items():
            # The telemetry thread waits an hour: after_response does all the work after the answers.
            telemetry = Telemetry(TelemetryConfig({"OTEL_TRACES_EXPORTER": "none"}, interval=3600))
            service = CheckService(GatewaySettings(), 0.1, telemetry)
            service.policy, telemetry.shadow.policy = served, policy
            service.check(payload, None)  # the first sighting, out of the way
            telemetry.flush()
            on_check = after = 0.0
            for _ in range(checks):
                started = time.perf_counter()
                service.check(payload, None)
                answered = time.perf_counter()
                service.after_response()
                after += time.perf_counter() - answered
                on_check += answered - started
            assert not telemetry.queued
            times[:] = min(times[0], on_check / checks), min(times[1], after / checks)
            telemetry.shutdown()
    request = egress_request(CheckRequest.FromString(payload), GatewaySettings())
    inline = min(timeit.repeat(lambda: evaluate(shadow, request), number=checks, repeat=3)) / checks
    (check_off, after_off), (check_on, after_on) = best.values()
    print(f"in process, µs a check (best of 5 x {checks:,}): on the check {check_off * 1e6:.1f} without a shadow"
          f" policy, {check_on * 1e6:.1f} with one; after the answer {after_off * 1e6:.1f} and {after_on * 1e6:.1f};"
          f" the shadow's evaluate() alone (what it would add to the check inline) {inline * 1e6:.1f}")  # fmt: skip


def _alternate(
    servers: list[tuple[str, list[str]]], frame: Path, payload: bytes, seconds: float, runs: int
) -> dict[str, list[dict[str, Any]]]:
    """Each server in turn, ``runs`` rounds: a shared machine's noise falls on all of them."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in servers}
    for _ in range(runs):
        for name, argv in servers:
            port = free_port()
            command = [*argv, "--listen", f"127.0.0.1:{port}"]
            results[name].append(_run(name, command, port, frame, payload, seconds, DEFAULT))
    return results


def _cpu(row: dict[str, Any]) -> float:
    """µs of server CPU a check at c64."""
    return float(row["c64"]["server_cores"] / row["c64"]["rps"] * 1e6)


def _compared(results: dict[str, list[dict[str, Any]]], header: str, base: str, digits: int) -> None:
    """The table of an alternating comparison: each server's median run by CPU a check, and the
    ratio of its CPU to ``base``'s, run by run."""
    print(
        f"| {header} | c1 p50 / p99 ms | c64 req/s | c64 p50 / p99 ms | µs CPU / check | vs {base}, each run |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, rows in results.items():
        cpu = [_cpu(row) for row in rows]
        ratios = [c / _cpu(b) for c, b in zip(cpu, results[base], strict=True)]
        row = rows[sorted(range(len(rows)), key=cpu.__getitem__)[len(rows) // 2]]
        c1, c64 = row["c1"], row["c64"]
        print(
            f"| {name} | {c1['p50_ms']:.2f} / {c1['p99_ms']:.2f} | {c64['rps']:,.0f}"
            f" | {c64['p50_ms']:.2f} / {c64['p99_ms']:.2f} | {sorted(cpu)[len(cpu) // 2]:.0f}"
            f" | {', '.join(f'{r:.{digits}f}x' for r in ratios)} |"
        )
        failed = sum(row[level]["failed"] for row in rows for level in LOADS)
        if failed:
            print(f"  failed requests: {failed:.0f}")


def _shadow(frame: Path, payload: bytes, seconds: float, runs: int, serve: list[str], policies: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        agrees, disagrees = _shadow_candidates(policies, Path(tmp))
        _in_process(payload, policies, agrees)
        servers = [
            ("no shadow policy", serve),
            ("shadow policy, agrees", [*serve, "--shadow-policy", str(agrees)]),
            ("shadow policy, disagrees on every check", [*serve, "--shadow-policy", str(disagrees)]),
        ]
        results = _alternate(servers, frame, payload, seconds, runs)
    print(f"`{' '.join(serve[2:])}`, default telemetry (1% of allows and every deny as spans, to /dev/null);"
          f" {seconds:g} s per level; {runs} run(s), the median run by µs CPU a check")  # fmt: skip
    _compared(results, "shadow", "no shadow policy", 2)


def _state_store(frame: Path, payload: bytes, seconds: float, runs: int, serve: list[str]) -> None:
    from redis_store import command, redis_server

    with redis_server() as url:
        servers = [
            ("no state store", serve),
            ("--state-store, every pair known", [*serve, "--state-store", url]),
        ]
        results = _alternate(servers, frame, payload, seconds, runs)
        keys = command(url, "DBSIZE")
    print(f"`{' '.join(serve[2:])}`, default telemetry; {seconds:g} s per level; {runs} run(s) alternating,"
          f" the median run by µs CPU a check; pairs in the store at the end: {keys}")  # fmt: skip
    _compared(results, "state store", "no state store", 3)
    ratios = sorted(
        _cpu(w) / _cpu(b)
        for w, b in zip(results["--state-store, every pair known"], results["no state store"], strict=True)
    )
    print(f"CPU per check with the store / without, median of {runs} runs: {ratios[len(ratios) // 2]:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8, help="per load level")
    parser.add_argument(
        "--warm-up", type=float, default=1, help="h2load's warm-up before each level, seconds"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: the trivial server and pyvoy with telemetry off and on, 0.5 s a level (~10 s)",
    )
    parser.add_argument("--telemetry", action="store_true", help="compare telemetry settings instead")
    parser.add_argument("--shadow", action="store_true", help="compare without and with --shadow-policy")
    parser.add_argument(
        "--state-store", action="store_true", help="compare without and with --state-store (every pair known)"
    )
    parser.add_argument(
        "--transport", default="pyvoy", help="with --shadow, --state-store: the transport (default pyvoy)"
    )
    parser.add_argument("--runs", type=int, default=1, help="rounds over every server, alternating")
    parser.add_argument(
        "--only", default="", help="only the servers whose name contains this (and the trivial one)"
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warm_up, args.runs = 0.5, 0.2, 1
    if shutil.which("h2load") is None:
        raise SystemExit("bench/server.py needs h2load: apt-get install nghttp2-client")
    payload = _check_request()
    with tempfile.TemporaryDirectory() as tmp:
        frame = Path(tmp) / "check.grpc"
        frame.write_bytes(b"\x00" + len(payload).to_bytes(4, "big") + payload)
        python = sys.executable
        policies = str(ROOT / "policies")
        if args.telemetry:
            _telemetry(frame, payload, args.seconds, [python, "-m", "authz", "serve", "--policy", policies])
            return
        if args.state_store:
            serve = [python, "-m", "authz", "serve", "--policy", policies, "--transport", args.transport]
            _state_store(frame, payload, args.seconds, args.runs, serve)
            return
        if args.shadow:
            serve = [python, "-m", "authz", "serve", "--policy", policies, "--transport", args.transport]
            _shadow(frame, payload, args.seconds, args.runs, serve, Path(policies))
            return
        serve = [python, "-m", "authz", "serve", "--policy", policies]
        servers = [
            (
                "trivial grpc.aio (1 process)",
                [python, str(ROOT / "bench/trivial_server.py"), "--workers", "1"],
                OFF,
            ),
            ("grpcio, telemetry off", [*serve, "--transport", "grpcio"], OFF),
            ("grpcio", [*serve, "--transport", "grpcio"], DEFAULT),
            ("pyvoy, telemetry off", [*serve, "--transport", "pyvoy"], OFF),
            ("pyvoy", [*serve, "--transport", "pyvoy"], DEFAULT),
            ("pyvoy --workers 2", [*serve, "--transport", "pyvoy", "--workers", "2"], DEFAULT),
        ]
        servers = [s for s in servers if args.only in s[0] or s[0].startswith("trivial")]
        if args.quick:
            servers = [s for s in servers if s[0] in QUICK_SERVERS]
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in servers}
        for _ in range(args.runs):
            for name, argv, environ in servers:
                port = free_port()
                command = [*argv, "--listen", f"127.0.0.1:{port}"]
                results[name].append(
                    _run(name, command, port, frame, payload, args.seconds, environ, args.warm_up)
                )
    _report(results, len(payload), args.seconds)


QUICK_SERVERS = ("trivial grpc.aio (1 process)", "pyvoy, telemetry off", "pyvoy")
OFF = {"OTEL_SDK_DISABLED": "true"}
DEFAULT = {"OTEL_TRACES_EXPORTER": "console"}  # spans made and exported (to /dev/null): the default sampling


def _report(results: dict[str, list[dict[str, Any]]], size: int, seconds: float) -> None:
    runs = len(next(iter(results.values())))
    print(
        f"CheckRequest: {size} bytes; {seconds:g} s per level; h2load -t1 on the same machine; {runs} run(s),"
        " the median run shown"
    )
    print(
        "| server | c1 req/s | c1 p50 / p99 ms | c64 req/s | c64 p50 / p99 ms | server cores | µs CPU / check | vs trivial |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    median = {
        name: sorted(rows, key=lambda r: r["c64"]["rps"])[len(rows) // 2] for name, rows in results.items()
    }
    trivial = median["trivial grpc.aio (1 process)"]["c64"]["rps"]
    for name, row in median.items():
        c1, c64 = row["c1"], row["c64"]
        cpu_us = c64["server_cores"] / c64["rps"] * 1e6
        print(
            f"| {name} | {c1['rps']:,.0f} | {c1['p50_ms']:.2f} / {c1['p99_ms']:.2f} | {c64['rps']:,.0f}"
            f" | {c64['p50_ms']:.2f} / {c64['p99_ms']:.2f} | {c64['server_cores']:.2f} | {cpu_us:.0f}"
            f" | {c64['rps'] / trivial:.2f}x |"
        )
        if c1["failed"] or c64["failed"]:
            print(f"  failed requests: {c1['failed']:.0f} at c1, {c64['failed']:.0f} at c64")
    for transport in ("grpcio", "pyvoy"):
        if transport not in results or f"{transport}, telemetry off" not in results:
            continue
        ratios = [on["c64"]["rps"] / off["c64"]["rps"]
                  for on, off in zip(results[transport], results[f"{transport}, telemetry off"], strict=True)]  # fmt: skip
        print(
            f"{transport}: default telemetry / off at c64, each run: {', '.join(f'{r:.0%}' for r in ratios)}"
        )
    print(
        "cores: server CPU time per wall second at c64 (the whole process tree); µs CPU / check: cores"
        " / req/s; h2load uses the rest of the 2 cores"
    )


if __name__ == "__main__":
    main()
