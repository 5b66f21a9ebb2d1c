"""Lifecycle benchmark: how long a policy change and a revocation take to
reach a running gateway, and what a 100,000-rule reload does to checks.

    .venv/bin/python bench/lifecycle.py [--changes 20] [--rules 100000] [--revocations 10] [--quick]

1. Change to decision: `authz serve` (default flags: inotify, 50 ms debounce)
   on a copy of the example policies; each change rewrites ci-runner.yaml,
   and the time runs from the file's close to the first Check answered
   under the new policy_version (a client polls every millisecond).
2. A big reload under traffic: `authz serve` on --rules rules; one client
   checks continuously while one file of the policy changes; the time to
   the new version, and the latency of every check answered meanwhile.
3. Revocation time through the real Envoy (the lab): from `authz revoke`
   returning to the first 403 REVOKED seen by a client that sends
   requests back to back; then `--lift` and back to 200, --revocations times.

Prints its table (nothing is written). --quick, a smoke test of the
benchmark (about 15 s): 2 changes, 1 revocation, a 1,000-rule reload.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from engine import documents_for

from authz.core.request import EgressRequest
from authz.ext_authz.health import serving
from authz.ext_authz.server import SERVICE_NAME
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest, CheckResponse
from authz.gateway.lab import Lab, free_port
from authz.policy import load_paths
from authz.testing import check_request

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "policies"
CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
WAIT_S = 60  # the longest a change or a revocation may take to show before the benchmark gives up


def _percentiles(values: list[float]) -> str:
    values = sorted(values)
    return (
        f"{statistics.median(values):.0f} | {values[int(len(values) * 0.9)]:.0f} | {values[-1]:.0f}"
        if values
        else "- | - | -"
    )


@contextmanager
def _serve(policies: Path) -> Iterator[Callable[[EgressRequest], dict[str, Any]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "authz", "serve", "--policy", str(policies), "--listen", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OTEL_SDK_DISABLED": "true"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not serving(f"127.0.0.1:{port}"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("authz serve did not start")
            time.sleep(0.1)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = channel.unary_unary(
                f"/{SERVICE_NAME}/Check",
                request_serializer=CheckRequest.SerializeToString,
                response_deserializer=CheckResponse.FromString,
            )

            def check(request: EgressRequest) -> dict[str, Any]:
                return dict(stub(check_request(request), timeout=5).dynamic_metadata)

            yield check
    finally:
        process.terminate()
        process.wait(30)


def change_to_decision(changes: int) -> list[float]:
    """Milliseconds from a file's close to the first decision under its version."""
    github = EgressRequest(CI, None, 443, "github.com")
    timings = []
    with tempfile.TemporaryDirectory() as directory:
        policies = Path(directory) / "policies"
        shutil.copytree(EXAMPLES, policies)
        target = policies / "ci-runner.yaml"
        text = target.read_text()
        with _serve(policies) as check:
            for change in range(changes):
                text += f"    - {{id: bench-{change}, hosts: [b{change}.example.org], ports: [443]}}\n"
                target.write_text(text)
                written = time.perf_counter()
                version = load_paths([policies]).version
                while check(github)["policy_version"] != version:
                    if time.perf_counter() - written > WAIT_S:
                        raise RuntimeError(f"change {change} not served after {WAIT_S} s")
                    time.sleep(0.001)
                timings.append((time.perf_counter() - written) * 1000)
                time.sleep(0.1)
    return timings


def big_reload(rules: int, settle: float = 1.0) -> dict[str, Any]:
    """A change to a --rules policy while one client checks back to back, from ``settle``
    seconds before the change until half that after the new version is served."""
    rng = random.Random(7)
    documents = documents_for(rules, rng)
    request = EgressRequest(
        documents[0]["spec"]["identities"][0], None, 443, documents[0]["spec"]["egress"][1]["hosts"][0]
    )
    with tempfile.TemporaryDirectory() as directory:
        policies, staged = Path(directory) / "policies", Path(directory) / "staged"
        files = 10
        per_file = len(documents) // files + 1
        texts = [
            yaml.safe_dump_all(documents[i * per_file : (i + 1) * per_file], sort_keys=False)
            for i in range(files)
        ]
        documents[-1]["spec"]["egress"][0]["ports"] = [443, 8443]
        changed = yaml.safe_dump_all(documents[(files - 1) * per_file :], sort_keys=False)
        for directory_, last in ((staged, changed), (policies, texts[-1])):
            directory_.mkdir()
            for index, text in enumerate([*texts[:-1], last]):
                (directory_ / f"p{index}.yaml").write_text(text)
        # The version the change will have, known before any check is timed: loading
        # 100,000 rules here, beside the timing client, would stall this process.
        version = load_paths([staged]).version
        del documents, texts
        gc.collect()
        with _serve(policies) as check:
            latencies: list[tuple[float, float, str]] = []
            errors = 0
            stop = threading.Event()

            def client() -> None:
                nonlocal errors
                while not stop.is_set():
                    started = time.perf_counter()
                    try:
                        answered = str(check(request)["policy_version"])
                    except grpc.RpcError:
                        errors += 1
                        continue
                    latencies.append((started, (time.perf_counter() - started) * 1000, answered))

            thread = threading.Thread(target=client, daemon=True)
            thread.start()
            time.sleep(settle)
            (policies / f"p{files - 1}.yaml").write_text(changed)
            written = time.perf_counter()
            while not latencies or latencies[-1][2] != version:
                if time.perf_counter() - written > 300:
                    raise RuntimeError("the big reload did not apply")
                time.sleep(0.01)
            applied = time.perf_counter()
            time.sleep(settle / 2)
            stop.set()
            thread.join(10)
    during = [ms for started, ms, _ in latencies if written <= started <= applied]
    before = [ms for started, ms, _ in latencies if started < written]
    return {
        "rules": rules,
        "apply_s": applied - written,
        "answered_during": len(during),
        "errors": errors,
        "before": before,
        "during": during,
    }


def revocation_time(times: int) -> list[float]:
    """Milliseconds from `authz revoke` returning to the first 403 REVOKED through Envoy."""
    timings = []
    with tempfile.TemporaryDirectory() as directory:
        policies = Path(directory) / "policies"
        shutil.copytree(EXAMPLES, policies)
        revocations = str(policies / "revocations.yaml")
        with Lab(Path(directory) / "lab", policies) as lab:

            def until(status: int) -> float:
                deadline = time.perf_counter() + WAIT_S
                while time.perf_counter() < deadline:
                    outcome = lab.http(CI, "registry.npmjs.org", "/left-pad")
                    if outcome.status == status:
                        return time.perf_counter()
                raise RuntimeError(f"no {status} through Envoy in {WAIT_S} s")

            for _ in range(times):
                until(200)
                subprocess.run(
                    [sys.executable, "-m", "authz", "revoke", revocations, "--identity", CI, "--reason", "bench",
                     "--by", "bench"],
                    check=True, capture_output=True,
                )  # fmt: skip
                returned = time.perf_counter()
                timings.append((until(403) - returned) * 1000)
                subprocess.run(
                    [sys.executable, "-m", "authz", "revoke", revocations, "--lift", CI],
                    check=True,
                    capture_output=True,
                )
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--rules", type=int, default=100_000)
    parser.add_argument("--revocations", type=int, default=10)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: 2 changes, 1 revocation, 1,000 rules"
    )
    args = parser.parse_args()
    if args.quick:
        args.changes, args.revocations, args.rules = 2, 1, 1_000
    print("| measured | runs | p50 ms | p90 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |")
    changes = change_to_decision(args.changes)
    print(f"| file change to first decision under it (examples) | {len(changes)} | {_percentiles(changes)} |")
    revocations = revocation_time(args.revocations)
    print(
        f"| `authz revoke` to first 403 REVOKED through Envoy | {len(revocations)} | {_percentiles(revocations)} |"
    )
    big = big_reload(args.rules, settle=0.2 if args.quick else 1.0)
    print(
        f"| check latency before the reload ({big['rules']:,} rules) | {len(big['before'])} | {_percentiles(big['before'])} |"
    )
    print(f"| check latency while it reloads | {len(big['during'])} | {_percentiles(big['during'])} |")
    print(
        f"\n{big['rules']:,}-rule change applied {big['apply_s']:.2f} s after the write;"
        f" {big['answered_during']} checks answered meanwhile, {big['errors']} failed."
    )


if __name__ == "__main__":
    main()
