"""bench/soak.py's report: one markdown table of every phase and path, and what each phase did."""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

from soak_load import Tallies, percentile

PATHS = {
    "gateway": "Envoy (mTLS, HTTP)",
    "direct": "gRPC to authz",
    "first-seen flood": "gRPC, first-seen flood",
}
LOSSES = ("decision_log_failed", "decision_log_full", "queue_full", "export_failed", "telemetry_queue_full")


def _mib(value: Any) -> str:
    return f"{value / 2**20:.0f}"


def _errors(errors: dict[str, int]) -> str:
    return (
        ", ".join(f"{kind} {count:,}" for kind, count in sorted(errors.items(), key=lambda e: -e[1])) or "-"
    )


def _delta(phase: dict[str, Any]) -> str:
    before, after = phase["before"], phase["after"]
    parts = [f"spans received by the collector +{after['spans'] - before['spans']:,}"]
    parts.append(f"machine load average {after['load']:.1f} at the end")
    if after["envoy"]:
        answers = ", ".join(f"{count:,} x {what}" for what, count in sorted(after["envoy"].items()))
        parts.append(f"Envoy's other answers (access log: status, details): {answers}")
    for cause in (*LOSSES, "first_seen"):
        change = after["losses"].get(cause, 0) - before["losses"].get(cause, 0)
        if change:
            label = "first sightings reported" if cause == "first_seen" else f"lost ({cause})"
            parts.append(f"{label} {change:+,.0f}")
    return "; ".join(parts)


def verdict_line(phases: list[dict[str, Any]], tallies: Tallies) -> tuple[str, int]:
    """The one line that says whether the soak passed, and its wrong decisions (0: it passed)."""
    counted = [tally for phase in phases for tally in tallies.by_phase.get(phase["name"], {}).values()]
    answered, wrong = sum(t.answered for t in counted), sum(t.wrong for t in counted)
    allows = sum(t.wrong_allows for t in counted)
    return f"Wrong decisions: {wrong:,} ({allows:,} allows) of {answered:,} answers.", wrong


def write_report(
    args: argparse.Namespace, command: str, phases: list[dict[str, Any]], tallies: Tallies, seconds: float
) -> int:
    """Writes ``args.out``; returns the number of wrong decisions."""
    verdict, wrong = verdict_line(phases, tallies)
    lines = [
        "# Soak: faults under load",
        "",
        f"`{command}`: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds / 60:.1f} minutes in all.",
        "",
        f"`authz serve --transport {args.transport} --workers {args.workers}` behind the lab's Envoy "
        f"(ext_authz timeout 250 ms, failure_mode_allow false, 503 on error, 200 itself once allowed), "
        f"decision log rotated at 1 MB, spans by OTLP to a collector of the soak's own, "
        f"`--first-seen-capacity {args.first_seen_capacity:,}`. Load in every phase: "
        f"{args.gateway_rate:g} requests/s through Envoy (10 cases, 6 identities, keep-alive mTLS) and "
        f"{args.direct_rate:g} checks/s straight to authz; phases of {args.phase_seconds:g} s, and the "
        f"first-seen phase as long as {args.pairs:,} distinct pairs take ({args.concurrency} in flight).",
        "",
        "Wrong: an answer other than what the policy (any version being rolled out) says of the request; "
        "(allows) counts those that allowed. Errors: no answer (gRPC status, HTTP 503 from Envoy, "
        "a connection error), or a deny because authz's own check budget ran out (fail closed). "
        "p99 over answered requests. RSS: authz's whole process tree (the parent and its workers).",
        "",
        verdict,
        "",
        "| phase | path | sent | answered | errors by kind | wrong (allows) | p99 ms | authz RSS MiB, start → end |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    wrong_examples: list[str] = []
    for phase in phases:
        name = phase["name"]
        first = True
        for path, label in PATHS.items():
            tally = tallies.by_phase.get(name, {}).get(path)
            if tally is None:
                continue
            rss = f"{_mib(phase['before']['rss'])} → {_mib(phase['after']['rss'])}" if first else ""
            lines.append(
                f"| {name if first else ''} | {label} | {tally.sent:,} | {tally.answered:,} | {_errors(tally.errors)} "
                f"| {tally.wrong} ({tally.wrong_allows}) | {percentile(tally.latencies, 0.99) * 1000:.1f} | {rss} |"
            )
            first = False
            wrong_examples += [f"{name}, {label}: {example}" for example in tally.examples]
    lines += ["", "What each phase did, and the telemetry it cost (summed over the workers' metrics endpoints; "
              "a restarted worker's count starts again from zero):", ""]  # fmt: skip
    for phase in phases:
        note = f"{phase['note']}; " if phase["note"] else ""
        lines.append(f"- **{phase['name']}** ({phase['seconds']:.0f} s): {note}{_delta(phase)}")
    if wrong_examples:
        lines += ["", "Wrong decisions (the first few):", "", *(f"- {example}" for example in wrong_examples)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    return wrong
