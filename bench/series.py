"""Series count: how many Prometheus series one `authz serve` process exports
(what each scrape target adds to Prometheus, before the recording rules).

    .venv/bin/python bench/series.py [--policies 10000] [--quick]

1. The example policies (policies/, moved to today as the demo serves them:
   their break-glass exception open, the other expired): every case of
   policies/tests sent as a check, then /metrics scraped.
2. --policies generated policies (bench/engine.py's, 10 rules each; one in a
   hundred with a break-glass exception): per policy an allowed check and an
   unknown destination, and a use of each exception; then /metrics scraped.

Series are counted by family: egress-authz's own (egress_authz_*,
target_info), and all (with the Python client's process_* and python_*).
--quick: the examples and 50 generated policies (a test runs it).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import yaml
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from engine import documents_for

from authz.core.request import EgressRequest
from authz.ext_authz.health import serving
from authz.ext_authz.server import SERVICE_NAME
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest, CheckResponse
from authz.gateway.examples import copy_examples
from authz.gateway.lab import free_port
from authz.policy import load_paths
from authz.policy.testcases import request_for
from authz.testing import check_request

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "policies"
EXPIRES = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def _served(policies: Path) -> Iterator[tuple[Any, int]]:
    """`authz serve` with a metrics port: a Check callable and that port."""
    port, metrics = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "authz", "serve", "--policy", str(policies), "--listen", f"127.0.0.1:{port}",
         "--metrics-port", str(metrics), "--transport", "grpcio"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not serving(f"127.0.0.1:{port}"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("authz serve did not start")
            time.sleep(0.1)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield (
                channel.unary_unary(
                    f"/{SERVICE_NAME}/Check",
                    request_serializer=CheckRequest.SerializeToString,
                    response_deserializer=CheckResponse.FromString,
                ),
                metrics,
            )
    finally:
        process.terminate()
        process.wait(60)


def count(exposition: str) -> Counter[str]:
    """Series: ``all``, ``egress_authz`` (ours, with target_info) and each of our families."""
    found: Counter[str] = Counter()
    for family in text_string_to_metric_families(exposition):
        found["all"] += len(family.samples)
        if family.name.startswith(("egress_authz", "target")):
            found["egress_authz"] += len(family.samples)
            found[family.name] += len(family.samples)
    return found


def measure(policies: Path, requests: Sequence[EgressRequest]) -> tuple[Counter[str], int, float]:
    """Send ``requests``, then scrape: the series by family, the exposition's bytes, the scrape's seconds."""
    with _served(policies) as (check, metrics):
        for request in requests:
            check(check_request(request), timeout=10)
        time.sleep(0.5)  # the telemetry thread's rounds (every 20 ms)
        started = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=60) as reply:
            exposition = reply.read().decode()
        scraped = time.perf_counter() - started
    return count(exposition), len(exposition.encode()), scraped


def examples(directory: Path) -> tuple[Path, list[EgressRequest]]:
    """The examples as the demo serves them (moved to today: one exception open, one expired),
    and their test cases as checks."""
    policies = directory / "examples"
    copy_examples(policies)
    shutil.rmtree(policies / "tests")
    cases = [case for loaded in load_paths([EXAMPLES]).tests for case in loaded.model.spec.cases]
    return policies, [request_for(case) for case in cases]


def generated(directory: Path, count_: int) -> tuple[Path, list[EgressRequest]]:
    documents = documents_for(count_ * 10, random.Random(7))
    requests = []
    for index, document in enumerate(documents):
        identity = document["spec"]["identities"][0]
        requests += [
            EgressRequest(identity, sni=f"api1.svc{index}.example.com", port=443),  # rule r1: allowed
            EgressRequest(identity, sni=f"unknown.svc{index}.example.net", port=443),  # NO_MATCHING_RULE
        ]
        if index % 100 == 0:
            document["spec"]["exceptions"] = [
                {"id": "break-glass", "hosts": [f"hotfix.svc{index}.example.com"], "ports": [443], "owner": "team",
                 "reason": "incident", "ticket": "INC-1", "expires": EXPIRES}
            ]  # fmt: skip
            requests.append(EgressRequest(identity, sni=f"hotfix.svc{index}.example.com", port=443))
    policies = directory / "generated"
    policies.mkdir()
    per_file = 1000
    for start in range(0, len(documents), per_file):
        text = yaml.safe_dump_all(documents[start : start + per_file], sort_keys=False)
        (policies / f"p{start // per_file}.yaml").write_text(text)
    return policies, requests


def row(name: str, policies: int, found: Counter[str], size: int, seconds: float) -> str:
    families = ", ".join(f"{family.removeprefix('egress_authz_')} {n:,}" for family, n in sorted(found.items())
                         if family.startswith("egress_authz_") and n)  # fmt: skip
    return (f"| {name} | {policies:,} | {found['egress_authz']:,} | {found['all']:,} | {size / 1024:,.0f} KiB"
            f" | {seconds * 1000:,.0f} ms | {families} |")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="the examples and 50 generated policies")
    args = parser.parse_args(argv)
    print("| policy set | policies | egress_authz series | all series | exposition | scrape | by family |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory() as directory:
        policies, requests = examples(Path(directory))
        found, size, seconds = measure(policies, requests)
        print(row(f"examples ({len(requests)} test cases as checks)", 7, found, size, seconds), flush=True)
        number = 50 if args.quick else args.policies
        policies, requests = generated(Path(directory), number)
        found, size, seconds = measure(policies, requests)
        print(row(f"generated ({len(requests):,} checks)", number, found, size, seconds))


if __name__ == "__main__":
    main()
