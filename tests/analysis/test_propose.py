"""Draft policies from observed traffic: they load with the project's own
loader, name exactly the observed destinations, leave owner and purpose as
TODO, and allow every logged request that was not denied by a guard."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.analysis.inventory import PROPOSABLE, Destination, IdentityFlows, Inventory, take_inventory
from authz.analysis.logs import DecisionLogs
from authz.analysis.propose import ProposeError, propose, write_drafts
from authz.analysis.replay import request_of
from authz.core.compiled import CompiledPolicy
from authz.core.decision import Reason, Verdict
from authz.core.engine import evaluate
from authz.policy import load_policy
from authz.testing import compile_documents, policy_document
from tests.analysis.test_inventory import TRAFFIC
from tests.analysis.traffic import (
    CI,
    EXPORTER,
    PAYMENTS,
    STRANGER,
    http,
    records,
    tls,
    write_log,
)  # fmt: skip

GENERATED = datetime(2026, 11, 10, 8, 0, tzinfo=UTC)


def inventory_of(log: Path) -> Inventory:
    with DecisionLogs([str(log)]) as logs:
        return take_inventory(logs)


def allowed_destinations(compiled: CompiledPolicy) -> set[tuple[str, str, int]]:
    """(identity, host pattern, port) for every rule of every policy."""
    return {
        (identity, str(host), port)
        for service in compiled.services
        for identity in service.identities
        for rule in service.rules
        for host in rule.hosts
        for port in rule.ports
    }


def test_drafts_load_allow_exactly_what_was_seen_and_replay_allows_every_request(tmp_path: Path) -> None:
    logged = records(TRAFFIC)
    log = write_log(tmp_path / "d.jsonl", logged)
    drafts, skipped = propose(inventory_of(log), generated_at=GENERATED)
    assert [draft.name for draft in drafts] == [
        "ci-runner",
        "payments-api",
        "partner-sync",
        "exporter",
        "frontend",
    ]
    assert skipped == ["1 record without an identity: no policy can name them"]
    paths = write_drafts(drafts, tmp_path / "drafts")
    assert sorted(path.name for path in (tmp_path / "drafts").iterdir()) == sorted(
        path.name for path in paths
    )
    policy_set, compiled = load_policy([tmp_path / "drafts"])

    observed = {
        (record["identity"], record["host"], record["port"])
        for record in logged
        if record["reason"] in PROPOSABLE
    }
    assert allowed_destinations(compiled) == observed
    guarded = {
        (record["identity"], record["host"]) for record in logged if record["reason"] not in PROPOSABLE
    }
    assert (PAYMENTS, "169.254.169.254") in guarded
    assert (EXPORTER, "upload.reporting-partner.example") in guarded
    assert not any(host == "169.254.169.254" for _, host, _ in allowed_destinations(compiled))

    for record in logged:
        if record["reason"] in PROPOSABLE:
            moment = datetime.fromisoformat(record["time"]).timestamp()
            decision = evaluate(compiled, request_of(record), now=moment)
            assert (decision.verdict, decision.reason) == (Verdict.ALLOW, Reason.ALLOWED_BY_RULE), record

    for loaded in policy_set.policies:
        metadata, spec = loaded.model.metadata, loaded.model.spec
        assert (metadata.owner, metadata.change_ref, spec.mode) == ("TODO", "TODO", "enforce")
        assert all(rule.purpose == "TODO" and rule.http is None for rule in spec.egress)
        assert not spec.allow_sni_host_mismatch


def test_the_header_says_where_the_draft_came_from_and_what_was_left_out(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", records(TRAFFIC))
    drafts, _ = propose(inventory_of(log), generated_at=GENERATED)
    by_name = {draft.name: draft for draft in drafts}
    payments = by_name["payments-api"].text
    header = [line for line in payments.splitlines() if line.startswith("# ")]
    assert header[:6] == [
        "# DRAFT EgressPolicy proposed by `authz inventory --propose` from observed traffic: review it before use.",
        f"# Identity: {PAYMENTS}",
        "# Drawn from 2 of its 4 decisions, out of 15 decisions in 1 decision log file(s):",
        f"#   {log}",
        "# Records from 2026-11-02T10:00:00.000Z to 2026-11-02T17:00:00.000Z.",
        "# Generated at 2026-11-10T08:00:00.000Z by authz 0.1.0.",
    ]
    assert "#   169.254.169.254:80: METADATA_ENDPOINT 1" in header
    assert (
        "# Never proposed: a destination only a guard denied (METADATA_ENDPOINT, SNI_HOST_MISMATCH," in header
    )
    assert "    # also denied by a guard: SNI_HOST_MISMATCH 1" in payments
    exporter = by_name["exporter"]
    assert (exporter.rules, exporter.left_out) == ((), ("upload.reporting-partner.example:443: REVOKED 1",))
    assert "  egress: []  # nothing seen that a rule should allow" in exporter.text
    ci = by_name["ci-runner"].text
    # Denied by the policy in force, yet proposed (the drafts allow what was seen): the reviewer is told.
    assert (
        "    # REVIEW: the policy in force denied these (NO_MATCHING_RULE 2): is this traffic wanted?" in ci
    )
    assert "HTTP GET 2, HEAD 1; paths /lodash/-/* 1, /react 1, /react/-/* 1" in ci
    assert "    # 1 record from 2026-11-02T14:10:00.000Z" in by_name["partner-sync"].text
    assert "# 1 allowed by dry-run only: the policy in force would deny them" in by_name["partner-sync"].text
    frontend = by_name["frontend"].text  # no policy at all: said once, not on every rule
    assert "# No policy named this identity (1 record UNKNOWN_IDENTITY)." in frontend
    assert "# REVIEW" not in frontend


def siblings_traffic(identity: str, parent: str, count: int, start: int = 0) -> list[tuple[str, Any]]:
    return [
        (f"2026-11-02T10:{index:02d}:00+00:00", tls(identity, f"h{index}.{parent}"))
        for index in range(start, start + count)
    ]


def test_a_wildcard_only_for_many_siblings_marked_for_review_never_over_a_public_suffix(
    tmp_path: Path,
) -> None:
    traffic = [
        *siblings_traffic(STRANGER, "api-provider.com", 6),
        *siblings_traffic(STRANGER, "few.example", 4, start=10),
        *siblings_traffic(STRANGER, "s3.eu-west-1.amazonaws.com", 6, start=20),  # anyone's bucket
        ("2026-11-02T11:00:00+00:00", tls(STRANGER, "api-provider.com")),  # the parent: not under *.
        ("2026-11-02T11:01:00+00:00", tls(STRANGER, "h0.api-provider.com", port=8443)),
    ]
    log = write_log(tmp_path / "d.jsonl", records(traffic))
    (draft,), _ = propose(inventory_of(log))
    wildcards = [rule for rule in draft.rules if rule.siblings]
    assert [(rule.id, rule.host, rule.ports, len(rule.siblings)) for rule in wildcards] == [
        ("wildcard-api-provider-com", "*.api-provider.com", (443, 8443), 6)
    ]
    exact = {rule.host for rule in draft.rules if not rule.siblings}
    assert exact == {"api-provider.com"} | {f"h{i}.few.example" for i in range(10, 14)} | {
        f"h{i}.s3.eu-west-1.amazonaws.com" for i in range(20, 26)
    }
    assert "    # REVIEW: a wildcard: 6 sibling hosts under api-provider.com were seen" in draft.text
    assert (
        "not folded into *.s3.eu-west-1.amazonaws.com: a public suffix, where anyone can own a name"
        in draft.text
    )
    write_drafts([draft], tmp_path / "drafts")
    _, compiled = load_policy([tmp_path / "drafts"])
    for record in records(traffic):
        assert evaluate(compiled, request_of(record)).verdict is Verdict.ALLOW


def test_existing_drafts_are_never_overwritten_without_force(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", records(TRAFFIC))
    drafts, _ = propose(inventory_of(log))
    directory = tmp_path / "drafts"
    write_drafts(drafts, directory)
    (directory / "ci-runner.yaml").write_text("# reviewed by a person\n")
    (directory / "frontend.yaml").unlink()
    with pytest.raises(ProposeError, match=r"would overwrite .*ci-runner.yaml.*: pass --force"):
        write_drafts(drafts, directory)
    assert (directory / "ci-runner.yaml").read_text() == "# reviewed by a person\n"
    assert not (directory / "frontend.yaml").exists()  # nothing at all was written
    write_drafts(drafts, directory, force=True)
    assert (directory / "ci-runner.yaml").read_text().startswith("# DRAFT EgressPolicy")
    (tmp_path / "file").write_text("")
    with pytest.raises(ProposeError, match="is not a directory"):
        write_drafts(drafts, tmp_path / "file")


def test_text_from_the_logs_cannot_leave_its_comment(tmp_path: Path) -> None:
    injected = "/a\n  - id: evil\n    hosts: ['*.example.com']\n    ports: [1-65535]\n#"
    traffic = [("2026-11-02T10:00:00+00:00", http(CI, "registry.npmjs.org", path=injected))]
    log = write_log(tmp_path / "d.jsonl", records(traffic))
    write_drafts(propose(inventory_of(log))[0], tmp_path / "drafts")
    _, compiled = load_policy([tmp_path / "drafts"])
    assert allowed_destinations(compiled) == {(CI, "registry.npmjs.org", 443)}


def test_a_host_sni_mismatch_the_policy_allowed_is_proposed_for_review(tmp_path: Path) -> None:
    policy = tmp_path / "policy"
    policy.mkdir()
    rule = {"id": "assets", "hosts": ["assets.example.com"], "ports": [443]}
    document = policy_document("cdn", [CI], [rule], allow_sni_host_mismatch=True)
    (policy / "cdn.yaml").write_text(yaml.safe_dump(document))
    traffic = [("2026-11-02T10:00:00+00:00", http(CI, "assets.example.com", sni="edge.cdn.example"))]
    logged = records(traffic, policies=[policy])
    assert logged[0]["reason"] == "ALLOWED_BY_RULE"
    (draft,), _ = propose(inventory_of(write_log(tmp_path / "d.jsonl", logged)))
    assert draft.allow_sni_host_mismatch
    assert "  # REVIEW: 1 allowed request named another TLS SNI than HTTP host" in draft.text
    document = yaml.safe_load(draft.text)
    compiled = compile_documents(document)
    assert evaluate(compiled, request_of(logged[0])).verdict is Verdict.ALLOW


def _inventory(identity: str, hosts: list[tuple[str, int]]) -> Inventory:
    """An inventory of one identity that reached ``hosts``, each allowed once."""
    moment = datetime(2026, 11, 2, 10)
    once: dict[str, Any] = {
        "records": 1, "first_seen": moment, "last_seen": moment, "allow": 1, "deny": 0, "would_deny": 0,
        "reasons": {"ALLOWED_BY_RULE": 1}, "rules": {}, "methods": {}, "other_methods": 0, "paths": {},
        "other_paths": 0, "zones": (), "sni_mismatch": 0, "unknown": False,
    }  # fmt: skip
    destinations = tuple(Destination(host=host, port=port, **once) for host, port in hosts)
    flows = IdentityFlows(identity, len(hosts), moment, moment, len(hosts), 0, 0, (), destinations)
    return Inventory(("d.jsonl",), None, None, moment, moment, len(hosts), 0, (flows,), "log")


LABELS = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "api", "eu", "us"])
PARENTS = st.sampled_from(["example.com", "svc.example.org", "co.uk", "github.io", "x.internal.example.org"])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(LABELS, PARENTS, st.sampled_from([443, 8443])), min_size=1, max_size=30, unique=True),
    st.integers(min_value=2, max_value=6),
)
def test_grouping_allows_every_host_seen_and_folds_only_many_siblings(
    seen: list[tuple[str, str, int]], minimum: int
) -> None:
    hosts = [(f"{label}.{parent}", port) for label, parent, port in seen]
    (draft,), _ = propose(_inventory(CI, hosts), wildcard_min_hosts=minimum)
    compiled = compile_documents(yaml.safe_load(draft.text))
    for host, port in hosts:
        assert evaluate(compiled, tls(CI, host, port)).verdict is Verdict.ALLOW
    siblings: dict[str, set[str]] = {}
    for label, parent, _ in seen:
        siblings.setdefault(parent, set()).add(label)
    folded = {rule.host.removeprefix("*.") for rule in draft.rules if rule.siblings}
    assert folded == {
        parent
        for parent, labels in siblings.items()
        if len(labels) >= minimum and parent not in ("co.uk", "github.io")
    }
    assert len({rule.id for rule in draft.rules}) == len(draft.rules)
