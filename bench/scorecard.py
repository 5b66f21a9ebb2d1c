"""The scorecard's example and its benchmark: a month of simulated traffic
against the example policies (policies/), each request decided by the real
engine and written in the decision log's own format, then `authz scorecard`
over it, with the exception half-life read from a throwaway git repository
that replays a plausible history of the policy files.

    .venv/bin/python bench/scorecard.py --records 1000000    # time the scorecard on a million records
    .venv/bin/python bench/scorecard.py --records 20000 --html docs/scorecard-example.html \\
        --png docs/scorecard-example.png                       # the README's example (PNG: needs chromium)

The traffic is made up (who calls what, how often, what goes wrong); the
decisions and the records are the real ones: the exporter's revocation and
the analytics namespace's quarantine take effect 40 s after their ``at``, as
a hot reload would, and the fraud-scoring exception opens on 2026-11-18.
With ``--access-log``, Envoy's access log of the same checks too
(`authz envoy-config`'s keys, one line each), passed to the scorecard: the
bytes each allowed check moved, drawn around a typical size per
destination; a denied check moves none.
The report is made as of the month's end (``--at``), so the example reads the
same whatever the day it is made.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image

from authz.core.compiled import CompiledPolicy
from authz.core.engine import evaluate
from authz.core.request import EgressRequest
from authz.policy import compile_policies, load_paths
from authz.policy.load import PolicySet
from authz.telemetry.decision_log import decision_record

ROOT = Path(__file__).resolve().parents[1]
END = datetime(2026, 11, 23, 12, tzinfo=UTC)
START = END - timedelta(days=30)
NS = "spiffe://prod.example.org/ns/"
GET, POST = ("GET", "/"), ("POST", "/v1/")
# identity: (weight, [(host, port, (method, path) or None for TLS, weight, from day)])
TRAFFIC: dict[str | None, tuple[float, list[tuple[str, int, tuple[str, str] | None, float, int]]]] = {
    f"{NS}payments/sa/payments-api": (20, [
        ("bank-gateway.example.com", 443, ("POST", "/v1/payments/settle"), 60, 0),
        ("kms.eu-west-1.amazonaws.com", 443, None, 30, 0),
        ("api.fraud-scoring.example", 443, POST, 8, 25),  # the exception's traffic
        ("api.stripe.com", 443, POST, 0.3, 12),
    ]),
    f"{NS}ci/sa/ci-runner": (25, [
        ("registry.npmjs.org", 443, None, 40, 0), ("github.com", 443, None, 40, 0),
        ("files.pythonhosted.org", 443, None, 20, 0), ("registry.yarnpkg.com", 443, None, 1.5, 9),
    ]),
    f"{NS}partners/sa/partner-sync": (10, [
        ("eu.api-provider.com", 443, ("POST", "/v2/orders"), 70, 0),
        ("status.api-provider.com", 443, ("GET", "/health"), 20, 0),
        ("cdn.partner-assets.example", 443, GET, 10, 14),
    ]),
    f"{NS}agents/sa/retrieval-agent": (10, [
        ("vectors.internal.example.org", 443, POST, 90, 0), ("api.openai.com", 443, POST, 6, 21),
        ("169.254.169.254", 80, ("GET", "/latest/meta-data/iam/"), 0.2, 18),
    ]),
    f"{NS}support/sa/support-jump": (5, [
        ("login.idp.example.com", 443, GET, 30, 0), ("grafana.monitoring.example.com", 443, GET, 50, 0),
        ("grafana.monitoring.example.com", 443, ("DELETE", "/api/dashboards/1"), 1, 0),
    ]),
    f"{NS}reporting/sa/exporter": (4, [
        ("upload.reporting-partner.example", 443, POST, 90, 0),
        ("s3.us-east-1.amazonaws.com", 443, None, 10, 26),
    ]),
    f"{NS}analytics/sa/etl": (10, [
        ("warehouse.internal.example.org", 443, None, 50, 0),
        ("data.s3.eu-west-1.amazonaws.com", 443, None, 50, 0),
    ]),
    f"{NS}sandbox/sa/notebook": (0.7, [("pypi.org", 443, None, 1, 0)]),
    None: (1.5, [("github.com", 443, None, 1, 0)]),  # no client certificate
    "spiffe://prod.example.org/ns//sa/bad": (0.1, [("github.com", 443, None, 1, 0)]),
}  # fmt: skip
# Typical bytes out and in of one allowed check, by destination (else DEFAULT_BYTES); each draw is
# log-normal around them.
BYTES = {
    "bank-gateway.example.com": (6_000, 2_000), "kms.eu-west-1.amazonaws.com": (2_000, 3_000),
    "registry.npmjs.org": (1_500, 900_000), "github.com": (3_000, 2_000_000),
    "files.pythonhosted.org": (1_200, 1_500_000), "eu.api-provider.com": (40_000, 4_000),
    "cdn.partner-assets.example": (800, 3_000_000), "vectors.internal.example.org": (5_000, 60_000),
    "api.openai.com": (250_000, 30_000), "upload.reporting-partner.example": (12_000_000, 500),
    "warehouse.internal.example.org": (20_000, 25_000_000), "data.s3.eu-west-1.amazonaws.com": (8_000_000, 2_000),
}  # fmt: skip
DEFAULT_BYTES = (1_000, 8_000)
EXCEPTION = """  exceptions:
    - id: {id}
      hosts: [{host}]
      ports: [443]
      owner: team-payments
      reason: {reason}
      ticket: {ticket}
      expires: {expires}
"""
# The payments policy's exceptions through the (simulated) history: (commit time, the exceptions then).
HISTORY = [
    ("2026-08-01T10:00:00Z", []),
    (
        "2026-08-12T09:00:00Z",
        [("dns-hotfix", "dns.backup.example", "outage", "INC-2011", "2026-08-20T00:00:00Z")],
    ),
    ("2026-08-14T16:30:00Z", []),
    (
        "2026-09-03T11:00:00Z",
        [("new-vendor", "api.new-vendor.example", "cut-over", "CHG-1110", "2026-10-01T00:00:00Z")],
    ),
    ("2026-09-24T15:00:00Z", []),
    (
        "2026-10-06T08:00:00Z",
        [("bank-dr", "dr.bank-gateway.example.com", "DR test", "CHG-1150", "2026-10-10T00:00:00Z")],
    ),
    ("2026-10-09T17:00:00Z", []),
    ("2026-11-18T09:00:00Z", None),  # the file as it is in policies/: backup-fraud-scoring, bank-cutover
]


def policy_history(directory: Path) -> Path:
    """A git repository with policies/ committed as HISTORY goes."""
    policies = directory / "policies"
    shutil.copytree(ROOT / "policies", policies)
    original = (policies / "payments-api.yaml").read_text()
    head = original[: original.index("  # Break-glass")]
    git = ["git", "-C", str(directory)]
    subprocess.run(["git", "init", "-q", str(directory)], check=True)
    subprocess.run([*git, "config", "user.email", "secops@example.org"], check=True)
    subprocess.run([*git, "config", "user.name", "secops"], check=True)
    for when, exceptions in HISTORY:
        text = original if exceptions is None else head + "".join(
            EXCEPTION.format(id=e, host=h, reason=r, ticket=t, expires=x) for e, h, r, t, x in exceptions
        )  # fmt: skip
        (policies / "payments-api.yaml").write_text(text)
        env = {**os.environ, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
        subprocess.run([*git, "add", "-A"], check=True, env=env)
        subprocess.run([*git, "commit", "-qm", f"policies as of {when}"], check=True, env=env)
    return policies


def phases(policy_set: PolicySet) -> list[tuple[float, CompiledPolicy]]:
    """The compiled policy from each instant on: no revocation, then each
    revocation 40 s (a reload) after its ``at``."""
    entries = sorted(
        (
            (entry.at, loaded.source.file, entry)
            for loaded in policy_set.revocations
            for entry in loaded.model.spec.revoked
        ),
        key=lambda item: item[0],
    )
    found = []
    for count in range(len(entries) + 1):
        applied = entries[:count]
        documents = []
        for loaded in policy_set.revocations:
            kept = [entry for _, file, entry in applied if file == loaded.source.file]
            spec = loaded.model.spec.model_copy(update={"revoked": kept})
            documents.append(
                dataclasses.replace(loaded, model=loaded.model.model_copy(update={"spec": spec}))
            )
        since = applied[-1][0].timestamp() + 40 if applied else 0.0
        found.append((since, compile_policies(dataclasses.replace(policy_set, revocations=tuple(documents)))))
    return found


def write_log(path: Path, records: int, seed: int = 7, access: Path | None = None) -> None:
    """The decision log; with ``access``, Envoy's access log of the same checks (its own random
    draws: the decision log is the same with it or without)."""
    rng, sizes = random.Random(seed), random.Random(seed + 1)
    compiled = phases(load_paths([ROOT / "policies"]))
    identities = list(TRAFFIC)
    weights = [TRAFFIC[identity][0] for identity in identities]
    span = (END - START).total_seconds()
    instants = sorted(START.timestamp() + rng.random() * span for _ in range(records))
    with path.open("w") as log, (access or Path(os.devnull)).open("w") as lines:
        for number, now in enumerate(instants):
            identity = rng.choices(identities, weights)[0]
            day = (now - START.timestamp()) // 86400
            targets = [target for target in TRAFFIC[identity][1] if target[4] <= day]
            host, port, http, _, _ = rng.choices(targets, [target[3] for target in targets])[0]
            method, request_path = http or (None, None)
            scheme = ("https" if port == 443 else "http") if http else None
            sni = None if http else host
            request = EgressRequest(identity, host, port, sni, method, request_path, "eu-west-prod", scheme)
            policy = next(policy for since, policy in reversed(compiled) if now >= since)
            decision = evaluate(policy, request, now)
            started = int(now * 1e9)
            record = decision_record(decision, f"{number:012x}", request, started, started + 180_000)
            log.write(json.dumps(record, separators=(",", ":")) + "\n")
            if access is not None:
                lines.write(
                    json.dumps(access_line(record, http is None, sizes), separators=(",", ":")) + "\n"
                )


def access_line(record: dict[str, object], tls: bool, rng: random.Random) -> dict[str, object]:
    """Envoy's access-log line for the check of ``record``, with the keys `authz envoy-config` renders."""
    typical_out, typical_in = BYTES.get(str(record["host"]), DEFAULT_BYTES)
    allowed = record["verdict"] == "allow"
    out, into = (
        round(typical * rng.lognormvariate(0, 0.8)) if allowed else 0 for typical in (typical_out, typical_in)
    )
    return {
        "time": record["time"], "listener": "sni_egress" if tls else "http_egress", "flags": "-" if allowed else "UAEX",
        "decision_id": record["decision_id"], "identity": record["identity"], "destination": record["destination"],
        "verdict": record["verdict"], "reason": record["reason"], "upstream_bytes_sent": out,
        "upstream_bytes_received": into, "downstream_bytes_received": out + 300, "downstream_bytes_sent": into + 300,
        "duration_ms": 5 + (into + out) // 200_000,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--html", type=Path, help="write the HTML report here")
    parser.add_argument("--png", type=Path, help="and a screenshot of it (headless chromium)")
    parser.add_argument("--access-log", action="store_true", help="write Envoy's access log too, and read it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scorecard-") as scratch:
        work = Path(scratch)
        policies = policy_history(work / "repo")
        log, access = work / "decisions.jsonl", work / "access.log"
        began = time.perf_counter()
        write_log(log, args.records, access=access if args.access_log else None)
        written = time.perf_counter() - began
        html = (args.html or work / "scorecard.html").resolve()
        command = [sys.executable, "-m", "authz", "scorecard", "--log", log.name,
                   "--policy", str(policies.relative_to(work)), "--git", "--at", END.isoformat(),
                   "--out", str(html), *(["--access-log", access.name] if args.access_log else [])]  # fmt: skip
        began = time.perf_counter()
        subprocess.run(command, check=True, cwd=work)  # relative names in the report
        seconds = time.perf_counter() - began
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if args.png:
            screenshot(html, args.png, work / "profile")
        print(json.dumps({"records": args.records, "log_mb": round(log.stat().st_size / 2**20, 1),
                          "log_written_s": round(written, 1), "scorecard_s": round(seconds, 2),
                          "scorecard_peak_rss_mb": round(peak)}))  # fmt: skip


def screenshot(html: Path, png: Path, profile: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("--png needs Debian's package chromium (make debs)")
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--force-color-profile=srgb", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--screenshot={png.resolve()}", "--window-size=1200,3700",
         html.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with Image.open(png) as image:  # a page of flat colours: a palette keeps it small
        image.convert("RGB").quantize(colors=64).save(png, optimize=True)


if __name__ == "__main__":
    main()
