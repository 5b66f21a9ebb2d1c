"""A small policy directory and a hand-made decision log whose every
scorecard figure is known (the counts are worked out beside each record)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

PAY = "spiffe://prod.example.org/ns/payments/sa/payments-api"
PARTNER = "spiffe://prod.example.org/ns/partners/sa/partner-sync"
EXPORTER = "spiffe://prod.example.org/ns/reporting/sa/exporter"
OLD_JOB = "spiffe://prod.example.org/ns/batch/sa/old-job"
STRANGER = "spiffe://prod.example.org/ns/shadow/sa/stranger"
ANALYTICS = "spiffe://prod.example.org/ns/analytics/*"

PAYMENTS = f"""\
apiVersion: egress-authz/v1
kind: EgressPolicy
metadata: {{name: payments-api, owner: team-payments}}
spec:
  identities: [{PAY}]
  egress:
    - {{id: bank, hosts: [bank.example.com], ports: [443]}}
    - {{id: kms, hosts: [kms.example.com], ports: [443]}}
  exceptions:
    - {{id: backup-scoring, hosts: [scoring.example], ports: [443], owner: team-payments,
       reason: primary down, ticket: INC-1, expires: "2026-11-22T00:00:00Z"}}
    - {{id: vendor-debug, hosts: [debug.vendor.example], ports: [443], owner: team-payments,
       reason: vendor case, ticket: INC-2, expires: "2026-12-20T00:00:00Z"}}
"""
PARTNERS = f"""\
apiVersion: egress-authz/v1
kind: EgressPolicy
metadata: {{name: partner-sync, owner: team-integrations}}
spec:
  identities: [{PARTNER}]
  mode: dry-run
  egress: [{{id: api, hosts: [eu.api-provider.com], ports: [443]}}]
"""
REVOCATIONS = f"""\
apiVersion: egress-authz/v1
kind: EgressRevocation
metadata: {{name: revocations}}
spec:
  revoked:
    - {{identity: {EXPORTER}, reason: leaked, by: secops, ticket: INC-7, at: "2026-11-20T09:12:00Z"}}
    - {{identity: {OLD_JOB}, reason: retired, by: secops, at: "2026-11-01T00:00:00Z"}}
    - identity: {ANALYTICS}
      reason: suspected exfiltration
      by: secops
      ticket: INC-9
      at: "2026-11-22T16:40:00Z"
      allow_only: [{{hosts: [warehouse.example], ports: [443]}}]
"""


def record(
    time: str, identity: str | None, host: str, verdict: str, reason: str, **fields: Any
) -> dict[str, Any]:
    would = "deny" if reason == "DRY_RUN" else verdict
    return {"time": time, "identity": identity, "host": host, "port": 443, "verdict": verdict,
            "would_verdict": would, "reason": reason, "mode": "enforce"} | fields  # fmt: skip


RECORDS = [
    # payments-api: 4 destinations, 3 of them first seen in the last 7 days (from 2026-11-16T10:00)
    record("2026-11-10T00:00:00Z", PAY, "kms.example.com", "allow", "ALLOWED_BY_RULE", policy="payments-api"),
    record(
        "2026-11-20T08:00:00Z", PAY, "bank.example.com", "allow", "ALLOWED_BY_RULE", policy="payments-api"
    ),
    record(
        "2026-11-20T09:00:00Z",
        PAY,
        "scoring.example",
        "allow",
        "ALLOWED_BY_EXCEPTION",
        policy="payments-api",
        exception="backup-scoring",
    ),
    record(
        "2026-11-21T10:00:00Z",
        PAY,
        "scoring.example",
        "allow",
        "ALLOWED_BY_EXCEPTION",
        policy="payments-api",
        exception="backup-scoring",
    ),
    record("2026-11-21T11:00:00Z", PAY, "evil.example", "deny", "NO_MATCHING_RULE", policy="payments-api"),
    record(
        "2026-11-22T18:00:00Z",
        PAY,
        "scoring.example",
        "deny",
        "EXCEPTION_EXPIRED",
        policy="payments-api",
        exception="backup-scoring",
    ),
    # the exporter: REVOKED once before the revocation's `at` (not counted), then 1 minute after it
    record("2026-11-20T09:00:00Z", EXPORTER, "s3.example", "deny", "REVOKED", revocation=EXPORTER),
    record("2026-11-20T09:13:00Z", EXPORTER, "s3.example", "deny", "REVOKED", revocation=EXPORTER),
    record("2026-11-20T09:30:00Z", EXPORTER, "s3.example", "deny", "REVOKED", revocation=EXPORTER),
    # revoked on 11-01, before the log begins: its revocation time is an upper bound
    record("2026-11-23T09:00:00Z", OLD_JOB, "ftp.example", "deny", "REVOKED", revocation=OLD_JOB),
    # partner-sync in dry-run: 2 of its 4 checks would be denied
    record(
        "2026-11-21T12:00:00Z",
        PARTNER,
        "eu.api-provider.com",
        "allow",
        "ALLOWED_BY_RULE",
        policy="partner-sync",
        mode="dry-run",
    ),
    record(
        "2026-11-21T12:01:00Z",
        PARTNER,
        "other.example",
        "allow",
        "DRY_RUN",
        policy="partner-sync",
        mode="dry-run",
        dry_run_reason="NO_MATCHING_RULE",
    ),
    record(
        "2026-11-22T12:00:00Z",
        PARTNER,
        "other.example",
        "allow",
        "DRY_RUN",
        policy="partner-sync",
        mode="dry-run",
        dry_run_reason="NO_MATCHING_RULE",
    ),
    record(
        "2026-11-22T13:00:00Z",
        PARTNER,
        "eu.api-provider.com",
        "allow",
        "ALLOWED_BY_RULE",
        policy="partner-sync",
        mode="dry-run",
    ),
    # no verified identity: 2 checks
    record("2026-11-22T14:00:00Z", None, "example.org", "deny", "NO_IDENTITY"),
    record("2026-11-22T15:00:00Z", "spiffe://bad id", "example.org", "deny", "INVALID_IDENTITY"),
    # an identity no policy names
    record("2026-11-23T10:00:00Z", STRANGER, "x.example", "deny", "UNKNOWN_IDENTITY"),
]
NOW = "2026-11-23T12:00:00+00:00"
#: The metrics' headings, in the order the reports show them.
TITLES = [
    "Identity coverage",
    "Unknown destination rate",
    "First-seen destinations per identity",
    "Exceptions open and their usage",
    "Exception half-life",
    "Revocation time",
    "Dry-run policies and their would-deny rate",
    "Denies by reason over time",
    "Top identities by bytes out",
    "Destinations no policy maps, by bytes received",
]


def write_policies(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "payments.yaml").write_text(PAYMENTS)
    (directory / "partners.yaml").write_text(PARTNERS)
    (directory / "revocations.yaml").write_text(REVOCATIONS)
    return directory


def write_log(path: Path, records: list[dict[str, Any]] = RECORDS) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in records))
    return path


def exception(name: str) -> str:
    return (f"    - {{id: {name}, hosts: [{name}.example], ports: [443], owner: team-payments, reason: r, "
            f"ticket: {name.upper()}-1, expires: \"2027-01-01T00:00:00Z\"}}\n")  # fmt: skip


def git_policy_repo(repo: Path, days: dict[int, list[str]]) -> Path:
    """A git repository whose ``policies/`` directory is committed on the
    given days of October 2026, each time with those exceptions in the
    payments policy (beside the dry-run and revocation files)."""
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for key, value in (("user.email", "t@example.org"), ("user.name", "t")):
        subprocess.run(["git", "-C", str(repo), "config", key, value], check=True)
    policies = write_policies(repo / "policies")
    head = PAYMENTS[: PAYMENTS.index("  exceptions:")]
    for day, names in days.items():
        text = head + ("  exceptions:\n" + "".join(map(exception, names)) if names else "")
        (policies / "payments.yaml").write_text(text)
        when = f"2026-10-{day:02d}T12:00:00+00:00"
        env = {**os.environ, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
        for args in (["add", "-A"], ["commit", "-qm", f"day {day}"]):
            subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    return policies


#: Exceptions a and b added on the 1st; a removed on the 3rd (2 days), c added; b removed on the 9th (8 days).
HISTORY = {1: ["a", "b"], 3: ["b", "c"], 9: ["c"]}
