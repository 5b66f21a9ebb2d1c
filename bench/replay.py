"""Replay benchmark: `authz replay` of the inventory benchmark's decision
logs (100,000 and 1,000,000 records, bench/inventory.py) against the drafts
`authz inventory --propose` draws from the same log, and against those drafts
narrowed (every tenth identity's busiest rule taken out). Wall time, CPU time
and peak RSS of each `authz replay` process, and what it reported.

    .venv/bin/python bench/replay.py [--sizes 100000,1000000] [--runs 3] [--dir DIR] [--out FILE]
"""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import yaml
from inventory import (  # bench/ is this script's directory
    AUTHZ,
    ROOT,
    arguments,
    finish,
    make_log,
    repeat,
    run,
)


def drafts_of(log: Path, target: Path) -> Path:
    """The drafts of ``log`` (once), and a copy narrowed: every tenth draft loses its first rule."""
    if not target.exists():
        run(["inventory", str(log), "--propose", str(target)])
    narrowed = target.with_name(target.name + "-narrowed")
    narrowed.mkdir(exist_ok=True)
    for index, draft in enumerate(sorted(target.glob("*.yaml"))):
        document = yaml.safe_load(draft.read_text())
        if index % 10 == 0 and len(document["spec"]["egress"]) > 1:
            document["spec"]["egress"] = document["spec"]["egress"][1:]
        (narrowed / draft.name).write_text(yaml.safe_dump(document))
    return narrowed


def report(log: Path, policy: Path) -> dict[str, object]:
    done = subprocess.run(
        [*AUTHZ, "replay", "--log", str(log), "--policy", str(policy), "--json", "--top", "3"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    found: dict[str, object] = json.loads(done.stdout)
    return found


def main() -> None:
    args = arguments(__doc__)
    rows = []
    for size in (int(text) for text in args.sizes.split(",")):
        log = make_log(args.dir / f"decisions-{size}.jsonl", size)
        drafts = args.dir / f"replay-drafts-{size}"
        narrowed = drafts_of(log, drafts)
        for name, policy in (("drafts", drafts), ("narrowed drafts", narrowed)):
            found = report(log, policy)
            new_denies = found["new_denies"]
            assert isinstance(new_denies, dict)
            times, cpus, peaks = repeat(
                ["replay", "--log", str(log), "--policy", str(policy), "--json"], args.runs
            )
            print(f"{size:,} records against the {name}: {statistics.median(times):.2f} s, "
                  f"{found['requests']:,} distinct requests, {new_denies['records']:,} newly denied", flush=True)  # fmt: skip
            rows.append(
                f"| {size:,} | {name} | {found['requests']:,} | {new_denies['records']:,} in"
                f" {new_denies['flows_total']:,} flows | {statistics.median(times):.2f} s | {min(times):.2f} s |"
                f" {statistics.median(cpus):.2f} s | {max(peaks):.0f} MiB |"
            )
    table = [
        f"| records | against | distinct requests | newly denied | wall, median of {args.runs} | fastest"
        " | CPU, median | peak RSS |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    finish(table, args.out)


if __name__ == "__main__":
    main()
