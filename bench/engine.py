"""Engine benchmark: compile time, per-decision latency and memory by policy size.

    .venv/bin/python bench/engine.py [--sizes 10,1000,100000] [--requests 200000] [--quick]

Each size runs in a fresh subprocess so resident memory is its own. Synthetic
policies: one service per 10 rules, each with its own SPIFFE ID; a tenth of
the hosts are ``*.`` wildcards, a fifth of the rules carry HTTP constraints.
Requests mix allows and denies (wrong host, wrong port, wrong method, unknown
identity) about half and half. Prints its table (nothing is written).
--quick (a smoke test, a few seconds): sizes 10 and 1,000, 5,000 requests.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

RULES_PER_SERVICE = 10


def documents_for(rules: int, rng: random.Random) -> list[dict[str, Any]]:
    """Synthetic EgressPolicy documents: one service per 10 rules (bench/lifecycle.py uses them too)."""
    documents = []
    for s in range(max(1, rules // RULES_PER_SERVICE)):
        egress = []
        for r in range(min(RULES_PER_SERVICE, rules)):
            host = f"*.svc{s}-{r}.example.com" if r % 10 == 9 else f"api{r}.svc{s}.example.com"
            rule: dict[str, Any] = {"id": f"r{r}", "hosts": [host], "ports": [443, "8000-8100"]}
            if r % 5 == 0:
                rule["http"] = {"methods": ["GET", "POST"], "paths": ["/v1/*"]}
            egress.append(rule)
        documents.append(
            {
                "apiVersion": "egress-authz/v1",
                "kind": "EgressPolicy",
                "metadata": {"name": f"svc{s}", "owner": "team", "change_ref": "CHG-1"},
                "spec": {"identities": [f"spiffe://prod.example.org/ns/n{s}/sa/svc{s}"], "egress": egress},
            }
        )
    return documents


def _requests(documents: list[dict[str, Any]], count: int, rng: random.Random) -> list[Any]:
    from authz.core.request import EgressRequest

    requests = []
    for _ in range(count):
        document = rng.choice(documents)
        identity = document["spec"]["identities"][0]
        rule = rng.choice(document["spec"]["egress"])
        host = rule["hosts"][0].replace("*", "x")
        method, path = ("GET", "/v1/items") if "http" in rule else (None, None)
        port = 443
        roll = rng.random()
        if roll < 0.2:
            host = f"unknown{rng.randrange(10**6)}.example.net"
        elif roll < 0.35:
            port = 22
        elif roll < 0.4:
            method, path = "DELETE", "/v1/items"
        elif roll < 0.5:
            identity = f"spiffe://prod.example.org/ns/x/sa/intruder{rng.randrange(1000)}"
        requests.append(EgressRequest(identity=identity, host=host, port=port, method=method, path=path))
    return requests


def _copy(text: str | None) -> str | None:
    return None if text is None else (text + " ")[:-1]


def _fresh(request: Any) -> Any:
    """A copy with new string objects, as a server decodes each request anew:
    otherwise the bench measures cache misses on its own pre-built requests."""
    return request._replace(identity=_copy(request.identity), host=_copy(request.host))


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def run_size(rules: int, requests: int) -> dict[str, Any]:
    from authz.core.engine import evaluate
    from authz.policy.compile import compile_policies
    from authz.testing import validate_documents

    rng = random.Random(rules)
    documents = documents_for(rules, rng)
    batch = _requests(documents, requests, rng)
    started = time.perf_counter()
    policy_set = validate_documents(*documents)
    validated = time.perf_counter()
    del documents
    compiled = compile_policies(policy_set)
    compiled_at = time.perf_counter()
    del policy_set
    gc.collect()
    rss = _rss_mib()
    allowed = 0
    timings = []
    clock = time.perf_counter_ns
    for request in batch[:2000]:  # warm the host cache as a running gateway would be
        evaluate(compiled, request)
    for prepared in batch:
        request = _fresh(prepared)
        t0 = clock()
        decision = evaluate(compiled, request)
        timings.append(clock() - t0)
        allowed += decision.allowed
    timings.sort()
    return {
        "rules": rules,
        "services": len(compiled.services),
        "validate_s": validated - started,
        "compile_s": compiled_at - validated,
        "median_us": statistics.median(timings) / 1000,
        "p99_us": timings[int(len(timings) * 0.99)] / 1000,
        "allowed_share": allowed / len(batch),
        "rss_mib": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,100000")
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="a smoke test: sizes 10,1000 and 5,000 requests")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.requests = "10,1000", 5_000
    if args.one is not None:
        print(json.dumps(run_size(args.one, args.requests)))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(size), "--requests", str(args.requests)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows.append(json.loads(out))
    print(
        f"{'rules':>8} {'services':>8} {'validate':>9} {'compile':>8} {'median':>8} {'p99':>8} {'allowed':>8} {'RSS':>8}"
    )
    for row in rows:
        print(
            f"{row['rules']:>8} {row['services']:>8} {row['validate_s']:>8.2f}s {row['compile_s']:>7.2f}s"
            f" {row['median_us']:>6.2f}µs {row['p99_us']:>6.2f}µs {row['allowed_share']:>8.0%}"
            f" {row['rss_mib']:>5.0f}MiB"
        )
    base = rows[0]["median_us"]
    print(
        f"median at {rows[-1]['rules']} rules / at {rows[0]['rules']} rules: {rows[-1]['median_us'] / base:.2f}x"
    )


if __name__ == "__main__":
    main()
