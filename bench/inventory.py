"""Inventory benchmark: `authz inventory` on a realistic decision log of
100,000 and 1,000,000 records, wall time and peak memory of the process;
then `authz inventory --access-log` with Envoy's access log of the same
decisions (a line each, and a line in 1,000 of no decision in the log).

    .venv/bin/python bench/inventory.py [--sizes 100000,1000000] [--runs 3] [--dir DIR] [--out FILE]

The logs are written once by DuckDB (COPY ... TO JSON lines, seconds for a
million) into DIR (default: a directory under the system's temp dir, kept
for the next run) with the keys and value shapes the server's decision log
has: about 200 identities with a skewed share of the traffic, a dozen
destinations each (shared registries and per-service partner APIs), 90%
allowed by a rule, then NO_MATCHING_RULE to unknown hosts, dry-run
would-denies, metadata-endpoint and domain-fronting attempts, callers
without or with an unknown identity, a revoked one; 70% HTTP with methods
and paths that carry ids and queries (so path prefixes must fold them),
30% TLS connections; a week of timestamps; and a malformed line in ten
thousand. Each run is `authz inventory LOG` (text to /dev/null) in a fresh
process, timed from start to exit, with its CPU time; peak RSS is the process's own
(``wait4``'s ru_maxrss). Then once with --policy, --graph and --propose; then
``--runs`` times with ``--access-log`` (the access log is written once from
the decision log, by DuckDB, the lines as `authz envoy-config` renders them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
AUTHZ = [sys.executable, "-m", "authz"]
RESOURCES = ["orders", "payments", "users", "files", "reports", "search", "tokens", "events", "items", "jobs"]
SHARED = ["github.com", "registry.npmjs.org", "pypi.org", "api.stripe.com", "login.idp.example.com",
          "kms.eu-west-1.amazonaws.com"]  # fmt: skip

# One row a record, every key of the decision log, from the row number alone (hash() as the dice).
_RECORDS = """
WITH dice AS (
    SELECT i, (hash(i, 1) % 1000000) / 1e6 AS u1, (hash(i, 2) % 1000000) / 1e6 AS u2, hash(i, 3) % 1000 AS r,
           hash(i, 4) % 10 < 7 AS is_http, (hash(i, 5) >> 1)::BIGINT AS h5, (hash(i, 6) >> 1)::BIGINT AS h6
    FROM range({n}) t(i)
), picked AS (
    SELECT *, CAST(floor(200 * u1 * u1) AS INTEGER) AS k, CAST(floor(12 * u2 * u2) AS INTEGER) AS j,
           TIMESTAMP '2026-11-01' + to_microseconds(CAST(i * (604800000000 // {n}) + h5 % 1000000 AS BIGINT)) AS ts
    FROM dice
), shaped AS (
    SELECT *,
        CASE WHEN r < 900 THEN 'ALLOWED_BY_RULE' WHEN r < 950 THEN 'NO_MATCHING_RULE' WHEN r < 970 THEN 'DRY_RUN'
             WHEN r < 975 THEN 'METADATA_ENDPOINT' WHEN r < 985 THEN 'NO_IDENTITY'
             WHEN r < 990 THEN 'SNI_HOST_MISMATCH' WHEN r < 995 THEN 'UNKNOWN_IDENTITY' ELSE 'REVOKED' END AS reason,
        CASE WHEN r >= 975 AND r < 985 THEN NULL
             WHEN r >= 990 AND r < 995 THEN 'spiffe://prod.example.org/ns/new/sa/job' || (h6 % 20)
             ELSE 'spiffe://prod.example.org/ns/team' || (k % 40) || '/sa/svc' || k END AS identity,
        CASE WHEN r >= 900 AND r < 950 THEN 'x' || (h6 % 25) || '.unknown.example'
             WHEN r >= 950 AND r < 970 THEN 'new' || (h6 % 8) || '.saas.example'
             WHEN r >= 970 AND r < 975 THEN '169.254.169.254'
             WHEN j < 3 THEN {shared}[1 + (k + j) % 6]
             ELSE 'api' || j || '.partner' || (k % 60) || '.example.com' END AS host,
        CASE WHEN r >= 970 AND r < 975 THEN 80 WHEN j = 11 THEN 8443 ELSE 443 END AS port
    FROM picked
)
SELECT
    reason IN ('ALLOWED_BY_RULE', 'DRY_RUN') AS allowed,
    CASE WHEN reason IN ('ALLOWED_BY_RULE', 'DRY_RUN') THEN 'allow' ELSE 'deny' END AS verdict,
    CASE WHEN reason = 'ALLOWED_BY_RULE' THEN 'allow' ELSE 'deny' END AS would_verdict,
    reason,
    CASE WHEN reason = 'DRY_RUN' THEN 'NO_MATCHING_RULE' END AS dry_run_reason,
    CASE WHEN reason = 'DRY_RUN' THEN 'dry-run' ELSE 'enforce' END AS mode,
    CASE WHEN identity IS NOT NULL AND reason <> 'UNKNOWN_IDENTITY' THEN 'svc' || k END AS policy,
    CASE WHEN reason = 'ALLOWED_BY_RULE' THEN 'rule-' || j END AS rule,
    CASE WHEN identity IS NOT NULL AND reason <> 'UNKNOWN_IDENTITY' THEN 'team-' || (k % 40) END AS owner,
    CASE WHEN identity IS NOT NULL AND reason <> 'UNKNOWN_IDENTITY' THEN 'CHG-' || (1000 + k) END AS change_ref,
    identity, host, port, host || ':' || port AS destination, 'sha256:5f0c1e2d3b4a6978' AS policy_version,
    NULL AS exception, NULL AS exception_owner, NULL AS ticket,
    CASE WHEN reason = 'REVOKED' THEN identity END AS revocation,
    CASE reason WHEN 'ALLOWED_BY_RULE' THEN 'rule rule-' || j || ' of svc' || k || ' admits ' || host || ':' || port
                ELSE 'no rule of svc' || k || ' admits ' || host || ':' || port END AS detail,
    strftime(ts, '%Y-%m-%dT%H:%M:%S.%gZ') AS time,
    md5(CAST(i AS VARCHAR)) AS decision_id,
    round(0.05 + (h5 % 400) / 1000, 3) AS duration_ms,
    CASE WHEN is_http THEN host END AS http_host,
    CASE WHEN is_http THEN 'https' END AS scheme,
    CASE WHEN reason = 'SNI_HOST_MISMATCH' THEN 'cdn.evil.example' WHEN NOT is_http THEN host END AS sni,
    CASE WHEN is_http THEN ['GET', 'GET', 'GET', 'POST', 'PUT', 'DELETE', 'HEAD'][1 + h5 % 7] END AS method,
    CASE WHEN is_http THEN '/v' || (1 + h5 % 2) || '/' || {resources}[1 + h6 % 10] || '/' || (h6 % 100000)
        || CASE WHEN h5 % 5 = 0 THEN '?page=' || (h6 % 10) ELSE '' END END AS path,
    'eu-west-prod' AS zone, '0.1.0' AS service_version,
    md5(CAST(i AS VARCHAR) || 't') AS trace_id, substr(md5(CAST(i AS VARCHAR) || 's'), 1, 16) AS span_id,
    h5 % 100 = 0 AS sampled, h6 % 1000 = 0 AS first_seen,
    CASE WHEN identity IS NOT NULL THEN 'local' END AS first_seen_source,
    NULL::VARCHAR AS shadow_verdict, NULL::VARCHAR AS shadow_reason, NULL::VARCHAR AS shadow_policy_version
FROM shaped
"""


def make_log(path: Path, records: int) -> Path:
    """The log of ``records`` records (and a malformed line in 10,000), unless it is there already."""
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    query = _RECORDS.format(n=records, shared=_sql_list(SHARED), resources=_sql_list(RESOURCES))
    with duckdb.connect() as db:
        db.execute("SET enable_progress_bar = false")
        db.execute(f"COPY ({query}) TO '{partial}' (FORMAT json)")
    with partial.open("a") as file:
        file.write("".join('{"time": "not a time", "verdict": "allow"}\n' for _ in range(records // 10_000)))
    partial.replace(path)
    return path


# One Envoy access-log line a decision of the log (the keys `authz envoy-config` renders): its
# listener from the decision's shape, bytes to the destination only when allowed (0 for a deny), a
# long-tailed size; then lines of decisions not in the log, lines of connections no check saw (TLS
# refused), and a malformed line in 10,000.
_ACCESS = """
WITH decided AS (
    SELECT *, (hash(decision_id, 7) % 1000000) / 1e6 AS u, hash(decision_id, 8) % 100 AS v
    FROM read_json('{decisions}', format='newline_delimited', ignore_errors=true,
                   columns={{'time': 'VARCHAR', 'decision_id': 'VARCHAR', 'verdict': 'VARCHAR',
                            'reason': 'VARCHAR', 'dry_run_reason': 'VARCHAR', 'rule': 'VARCHAR',
                            'policy': 'VARCHAR', 'would_verdict': 'VARCHAR', 'identity': 'VARCHAR',
                            'destination': 'VARCHAR', 'sni': 'VARCHAR', 'method': 'VARCHAR',
                            'http_host': 'VARCHAR'}})
    WHERE decision_id IS NOT NULL
), lines AS (
    SELECT time, CASE WHEN method = 'CONNECT' THEN 'connect_proxy' WHEN method IS NULL THEN 'sni_egress'
                      ELSE 'http_egress' END AS listener,
           identity AS peer, sni, verdict = 'allow' AS allowed, u, v, decision_id, verdict, reason,
           dry_run_reason, rule, policy, would_verdict = 'deny' AS would_deny, identity, destination, method,
           http_host AS authority
    FROM decided
    UNION ALL
    SELECT strftime(TIMESTAMP '2026-11-01' + to_microseconds(i * 6048000000), '%Y-%m-%dT%H:%M:%S.%gZ'),
           'sni_egress', NULL, 'unknown.example', i % 2 = 0, 0.5, 0, CASE WHEN i % 2 = 0 THEN md5('gone' || i) END,
           NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM range({orphans}) t(i)
)
SELECT time, listener, peer, sni, CASE WHEN allowed THEN '127.0.0.1:443' END AS upstream,
       NULL::VARCHAR AS upstream_failure, CASE WHEN allowed THEN '-' ELSE 'UAEX' END AS flags,
       CASE WHEN allowed THEN CAST(200 + 4e6 * pow(u, 12) AS BIGINT) ELSE 0 END AS upstream_bytes_sent,
       CASE WHEN allowed THEN CAST(400 + 2e7 * pow(1 - u, 14) AS BIGINT) ELSE 0 END AS upstream_bytes_received,
       CASE WHEN allowed THEN CAST(180 + 4e6 * pow(u, 12) AS BIGINT) ELSE 350 END AS downstream_bytes_received,
       CASE WHEN allowed THEN CAST(420 + 2e7 * pow(1 - u, 14) AS BIGINT) ELSE 440 END AS downstream_bytes_sent,
       CAST(2 + v * v / 10 AS INTEGER) AS duration_ms, CASE WHEN allowed THEN 'via_upstream' ELSE 'ext_authz_denied' END AS details,
       decision_id, verdict, reason, dry_run_reason, rule, policy, would_deny, identity, destination,
       CASE WHEN listener <> 'sni_egress' THEN method END AS method, authority,
       CASE WHEN listener = 'sni_egress' THEN NULL WHEN allowed THEN 200 ELSE 403 END AS status
FROM lines
"""


def make_access_log(path: Path, decisions: Path) -> Path:
    """Envoy's access log for the decisions of ``decisions`` (one line each, and a line in
    1,000 of no decision in it), unless it is there already."""
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    with duckdb.connect() as db:
        db.execute("SET enable_progress_bar = false")
        (count,) = db.execute(
            f"SELECT count(*) FROM read_json('{decisions}', ignore_errors=true)"
        ).fetchone() or (0,)
        query = _ACCESS.format(decisions=decisions, orphans=max(1, count // 1000))
        db.execute(f"COPY ({query}) TO '{partial}' (FORMAT json)")
    with partial.open("a") as file:
        file.write(
            "".join('{"decision_id": 7, "upstream_bytes_sent": "many"}\n' for _ in range(count // 10_000))
        )
    partial.replace(path)
    return path


def _sql_list(items: list[str]) -> str:
    return "[" + ", ".join(f"'{item}'" for item in items) + "]"


def run(arguments: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user and system: steadier than wall time on a
    shared machine) and peak RSS (MiB) of one `authz` process."""
    started = time.perf_counter()
    with open(os.devnull, "w") as sink:
        process = subprocess.Popen([*AUTHZ, *arguments], stdout=sink, stderr=subprocess.PIPE, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    assert process.stderr is not None
    errors = process.stderr.read().decode()
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"authz {' '.join(arguments)} failed:\n{errors}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def arguments(description: str | None) -> argparse.Namespace:
    """The options of the log benchmarks (this one and bench/replay.py), parsed; the logs' directory made."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "authz-bench-inventory")
    parser.add_argument("--out", type=Path, help="write the Markdown table here too")
    parser.add_argument(
        "--no-access", dest="access", action="store_false", help="skip the --access-log runs (inventory.py)"
    )
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    return args


def repeat(arguments: list[str], runs: int) -> tuple[list[float], list[float], list[float]]:
    """``runs`` runs of one `authz` command: their wall times, CPU times and peak RSS."""
    times, cpus, peaks = [], [], []
    for _ in range(runs):
        elapsed, cpu, peak = run(arguments)
        times.append(elapsed)
        cpus.append(cpu)
        peaks.append(peak)
        print(
            f"  authz {arguments[0]}: {elapsed:.2f} s ({cpu:.2f} s CPU), peak RSS {peak:.0f} MiB", flush=True
        )
    return times, cpus, peaks


def finish(table: list[str], out: Path | None) -> None:
    """Print the table with the load average it was measured under, and write it to ``out`` too."""
    load = "load average (1, 5, 15 min) at the end: " + ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print("\n".join(table) + f"\n\n{load}")
    if out is not None:
        out.write_text("\n".join(table) + f"\n\n{load}\n")


def main() -> None:
    args = arguments(__doc__)
    rows = []
    for size in (int(text) for text in args.sizes.split(",")):
        started = time.perf_counter()
        log = make_log(args.dir / f"decisions-{size}.jsonl", size)
        made = time.perf_counter() - started
        megabytes = log.stat().st_size / 2**20
        print(f"{size:,} records: {log} ({megabytes:,.0f} MiB, ready in {made:.1f} s)", flush=True)
        times, cpus, peaks = repeat(["inventory", str(log)], args.runs)
        drafts = args.dir / f"drafts-{size}"
        everything = [
            "inventory", str(log), "--policy", "policies", "--graph", str(args.dir / f"flows-{size}.svg"),
            "--propose", str(drafts), "--force", "--json",
        ]  # fmt: skip
        full, full_cpu, full_peak = run(everything)
        print(f"  with --policy --graph --propose --json: {full:.2f} s ({full_cpu:.2f} s CPU), peak RSS"
              f" {full_peak:.0f} MiB", flush=True)  # fmt: skip
        rows.append(
            f"| {size:,} | {megabytes:,.0f} MiB | {statistics.median(times):.2f} s | {min(times):.2f} s |"
            f" {statistics.median(cpus):.2f} s | {max(peaks):.0f} MiB | {full:.2f} s ({full_cpu:.2f} s CPU) |"
            f" {full_peak:.0f} MiB |"
        )
    table = [
        f"| records | log size | wall, median of {args.runs} | fastest | CPU, median | peak RSS"
        " | with --policy --graph --propose --json | its peak RSS |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    if args.access:
        table += ["", *access_table(args)]
    finish(table, args.out)


def access_table(args: argparse.Namespace) -> list[str]:
    """`authz inventory LOG --access-log ACCESS` on each size: the join of as many access-log lines."""
    rows = []
    for size in (int(text) for text in args.sizes.split(",")):
        log = make_log(args.dir / f"decisions-{size}.jsonl", size)
        started = time.perf_counter()
        access = make_access_log(args.dir / f"access-{size}.jsonl", log)
        made = time.perf_counter() - started
        megabytes = access.stat().st_size / 2**20
        print(
            f"{size:,} records' access log: {access} ({megabytes:,.0f} MiB, ready in {made:.1f} s)",
            flush=True,
        )
        times, cpus, peaks = repeat(["inventory", str(log), "--access-log", str(access)], args.runs)
        rows.append(
            f"| {size:,} | {megabytes:,.0f} MiB | {statistics.median(times):.2f} s | {min(times):.2f} s |"
            f" {statistics.median(cpus):.2f} s | {max(peaks):.0f} MiB |"
        )
    return [
        f"| records, and access-log lines | access log size | --access-log: wall, median of {args.runs}"
        " | fastest | CPU, median | peak RSS |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]


if __name__ == "__main__":
    main()
