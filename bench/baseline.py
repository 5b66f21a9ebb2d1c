"""Baseline benchmark: `authz baseline` on the inventory benchmark's decision
logs (bench/inventory.py writes them), into a real redis-server: wall time,
CPU time and peak memory of the process.

    .venv/bin/python bench/baseline.py [--sizes 100000,1000000] [--runs 3] [--dir DIR] [--out FILE]

Each run is a fresh process against an emptied store (FLUSHALL), so every
pair is written; then once more against the full store (every pair already
known), and once with --dry-run. Needs redis-server (apt-get install redis-server).
"""

from __future__ import annotations

import statistics
import time

from inventory import arguments, finish, make_log, repeat, run
from redis_store import command, redis_server

# The benchmark log is dated from 2026-11-01 on: a TTL long enough that its pairs are never too old to write.
TTL = ["--first-seen-ttl", "3650d"]


def main() -> None:
    args = arguments(__doc__)
    rows = []
    with redis_server() as url:
        for size in (int(text) for text in args.sizes.split(",")):
            started = time.perf_counter()
            log = make_log(args.dir / f"decisions-{size}.jsonl", size)
            print(f"{size:,} records: {log} (ready in {time.perf_counter() - started:.1f} s)", flush=True)
            times, cpus, peaks = [], [], []
            for _ in range(args.runs):
                command(url, "FLUSHALL")
                elapsed, cpu, peak = repeat(["baseline", str(log), "--state-store", url, *TTL], 1)
                times += elapsed
                cpus += cpu
                peaks += peak
            pairs = command(url, "DBSIZE")
            known, known_cpu, _ = run(["baseline", str(log), "--state-store", url, *TTL])
            dry, _, _ = run(["baseline", str(log), "--state-store", url, *TTL, "--dry-run"])
            print(
                f"  every pair known: {known:.2f} s ({known_cpu:.2f} s CPU); --dry-run {dry:.2f} s",
                flush=True,
            )
            rows.append(
                f"| {size:,} | {pairs} | {statistics.median(times):.2f} s | {min(times):.2f} s |"
                f" {statistics.median(cpus):.2f} s | {max(peaks):.0f} MiB | {known:.2f} s ({known_cpu:.2f} s CPU)"
                f" | {dry:.2f} s |"
            )
    table = [
        f"| records | pairs written | wall, median of {args.runs} | fastest | CPU, median | peak RSS"
        " | again, every pair known | --dry-run |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    finish(table, args.out)


if __name__ == "__main__":
    main()
