"""bench/soak.py's judge (the soak itself is never run as a test): the
requests it patches together are the ones it judges, and wrong answers are
told from errors."""

from __future__ import annotations

import shutil
from pathlib import Path

from authz.ext_authz.attributes import GatewaySettings, egress_request
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest
from authz.gateway.lab import ZONE
from tests.paths import EXAMPLES, bench_module


def test_each_patched_pair_is_the_request_authz_decodes() -> None:
    soak = bench_module("soak_load")
    settings = GatewaySettings.create(zone=ZONE, sni_port=443)
    pairs = list(soak.distinct_pairs(25))
    assert len({request.identity for request, _ in pairs}) == 25
    assert len({request.sni for request, _ in pairs}) == 25
    for request, payload in pairs:
        assert egress_request(CheckRequest.FromString(payload), settings) == request


def test_a_wrong_allow_is_counted_and_a_timeout_is_an_error_not_a_decision() -> None:
    soak = bench_module("soak_load")
    tally = soak.Tally()
    deny = {("deny", "NO_MATCHING_RULE")}
    tally.judge(("deny", "NO_MATCHING_RULE"), deny, 0.001, "right")
    tally.judge(("allow", "ALLOWED_BY_RULE"), deny, 0.001, "wrong")
    tally.judge(("deny", "TIMEOUT"), {("allow", "ALLOWED_BY_RULE")}, 0.2, "late")
    assert (tally.answered, tally.wrong, tally.wrong_allows) == (3, 1, 1)
    assert dict(tally.errors) == {"deny TIMEOUT (fail closed)": 1}
    assert tally.examples[0].startswith("wrong: got ('allow', 'ALLOWED_BY_RULE')")


def test_the_oracle_accepts_either_version_while_a_reload_rolls_out(tmp_path: Path) -> None:
    soak = bench_module("soak_load")
    oracle = soak.Oracle([str(EXAMPLES)])
    case = soak.Case("spiffe://prod.example.org/ns/ci/sa/ci-runner", "GET", "registry.npmjs.org", "/")
    assert oracle.acceptable(oracle.in_force, case.request()) == {("allow", "ALLOWED_BY_RULE")}
    shutil.copytree(EXAMPLES, tmp_path / "next")
    ci = tmp_path / "next" / "ci-runner.yaml"
    ci.write_text(ci.read_text().replace("hosts: [registry.npmjs.org, npmjs.org]", "hosts: [npmjs.org]"))
    oracle.begin(soak.Oracle([str(tmp_path / "next")]).in_force[0])
    both = {("allow", "ALLOWED_BY_RULE"), ("deny", "NO_MATCHING_RULE")}
    assert oracle.acceptable(oracle.in_force, case.request()) == both
    oracle.settle()
    assert oracle.acceptable(oracle.in_force, case.request()) == {("deny", "NO_MATCHING_RULE")}
