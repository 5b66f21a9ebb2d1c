"""The report of bench/e2e.py: medians over runs, ratios within each run (to
Envoy's RBAC filter and to the trivial gRPC server), a markdown table per
rate and a PNG plot of latency percentiles against offered rate."""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

METRICS = ("rps", "p50_ms", "p90_ms", "p99_ms", "bad", "gateway_us", "server_us", "client_us", "loadgen_us",
           "busy_cores")  # fmt: skip
BASES = ("rbac", "trivial")


def _label(rate: int | None) -> str:
    return "max" if rate is None else str(rate)


def summarize(records: Sequence[dict[str, Any]]) -> dict[tuple[str, int | None], dict[str, float]]:
    """Per (configuration, rate): each metric's median over runs, and
    ``x_<base>_<metric>``: the median over runs of the ratio to ``base`` in the same run."""
    by = {(r["config"], r["rate"], r["run"]): r for r in records}
    keys = sorted({(r["config"], r["rate"]) for r in records}, key=str)
    summary: dict[tuple[str, int | None], dict[str, float]] = {}
    for config, rate in keys:
        runs = [r for r in records if (r["config"], r["rate"]) == (config, rate)]
        row = {m: statistics.median(r[m] for r in runs) for m in METRICS if m in runs[0]}
        row["bad"] = sum(r["bad"] for r in runs)  # failed requests: all runs, not the median
        for base in BASES:
            for metric in ("rps", "p50_ms", "p90_ms", "p99_ms"):
                ratios = [
                    r[metric] / by[(base, rate, r["run"])][metric]
                    for r in runs
                    if (base, rate, r["run"]) in by and by[(base, rate, r["run"])][metric]
                ]
                if ratios:
                    row[f"x_{base}_{metric}"] = statistics.median(ratios)
        summary[(config, rate)] = row
    return summary


def _ratio(row: dict[str, float], base: str) -> str:
    if f"x_{base}_p50_ms" not in row:
        return "-"
    return f"{row[f'x_{base}_p50_ms']:.2f} / {row[f'x_{base}_p99_ms']:.2f}"


def _cpu(row: dict[str, float], key: str) -> str:
    return f"{row[key]:.0f}" if key in row else "-"


def _environment() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    envoy = Path(sys.executable).parent / "envoy"
    version = subprocess.run([str(envoy), "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"/(\d+\.\d+\.\d+)/", version)
    envoy_version = found.group(1) if found else "?"
    return (
        f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, Envoy {envoy_version},"
        f" {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    )


def markdown(setup: dict[str, Any], records: Sequence[dict[str, Any]]) -> str:
    summary = summarize(records)
    labels = {c["key"]: c["label"] for c in setup["configs"]}
    rates = list(dict.fromkeys(r["rate"] for r in records))
    lines = [
        "# End-to-end: authorization through the real Envoy gateway",
        "",
        f"`{setup['command']}`: {_environment()}.",
        f"{setup['runs']} run(s) of {setup['seconds']:g} s per point (plus {setup.get('warm_up', 1):g} s warm-up), configurations"
        " alternating within each run. Load: h2load, plaintext HTTP/2; at a fixed rate one `h2load -c1 --rps"
        " R/n` process per 100 req/s, out of phase (evenly spread requests: one h2load with many clients sends"
        f" in bursts); as fast as it goes, `h2load -c{setup['clients']} -m{setup['streams']}` (64 in flight)."
        " To a workload-side Envoy that"
        " reaches the gateway's HTTP listener over mTLS with ci-runner's SVID; the gateway answers 200 itself"
        f" (`--direct-response`). Each Envoy: --concurrency {setup['envoy_concurrency']}. Medians over runs;"
        " ratios are medians of same-run ratios (p50 / p99). CPU: µs of CPU per request, whole process tree,"
        " from /proc, warm-up included; cores busy: the whole machine's CPU (load generator and"
        " client-side Envoy included) over the point, out of 2.",
        "",
        "Sanity (through the client-side Envoy): "
        + ", ".join(
            f"{c['config']} allowed {c['allowed']}, pastebin {c['pastebin']}" for c in setup["sanity"]
        ),
        "",
    ]
    for rate in rates:
        lines += [
            "",
            f"### {'As fast as it goes' if rate is None else f'{rate} req/s offered'}",
            "",
            "| configuration | req/s | p50 ms | p90 ms | p99 ms | x RBAC (p50 / p99) | x trivial (p50 / p99)"
            " | req/s x RBAC | req/s x trivial | gateway µs CPU/req | server µs CPU/req | cores busy | failed (all runs) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for config, label in labels.items():
            row = summary.get((config, rate))
            if row is None:
                continue
            lines.append(
                f"| {label} | {row['rps']:,.0f} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f}"
                f" | {row['p99_ms']:.2f} | {_ratio(row, 'rbac')} | {_ratio(row, 'trivial')}"
                f" | {row.get('x_rbac_rps', float('nan')):.2f} | {row.get('x_trivial_rps', float('nan')):.2f}"
                f" | {_cpu(row, 'gateway_us')} | {_cpu(row, 'server_us')} | {row['busy_cores']:.2f} | {row['bad']:.0f} |"
            )
    lines += ["", f"Gateway rendered as (authz serve on a Unix socket): `{setup['example_render']}`", ""]
    return "\n".join(lines)


def plot(setup: dict[str, Any], records: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(records)
    rates = list(dict.fromkeys(r["rate"] for r in records))
    figure, axes = plt.subplots(1, 3, figsize=(15, 5), sharey=True)
    for axis, (metric, title) in zip(
        axes, (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99")), strict=True
    ):
        for config in setup["configs"]:
            points = [summary.get((config["key"], rate), {}).get(metric) for rate in rates]
            axis.plot(range(len(rates)), points, marker="o", label=config["label"])
        axis.set_title(f"{title} latency")
        axis.set_xticks(range(len(rates)), [_label(rate) for rate in rates])
        axis.set_xlabel("offered rate (req/s; max: -c4 -m16, as fast as it goes)")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms (h2load → client Envoy → gateway → 200)")
    axes[-1].legend(fontsize=8, loc="upper left")
    figure.suptitle("Authorization through the real Envoy gateway, by configuration (medians over runs)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(setup: dict[str, Any], records: Sequence[dict[str, Any]], directory: Path) -> str:
    """Writes e2e.md and e2e.png in ``directory``; returns the markdown."""
    text = markdown(setup, records)
    (directory / "e2e.md").write_text(text)
    plot(setup, records, directory / "e2e.png")
    return text + f"\nplot: {directory / 'e2e.png'}\n"
