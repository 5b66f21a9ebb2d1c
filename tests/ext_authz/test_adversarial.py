"""The adversarial corpus through CheckService in-process, as every transport
calls it; the same cases go through `authz serve` and the real Envoy in
tests/e2e/test_adversarial.py."""

import pytest

from authz.ext_authz.check import OK, CheckService
from authz.ext_authz.wire.ext_authz_pb2 import CheckResponse
from authz.policy import load_policy
from tests.adversarial import CASES, SETTINGS, Case
from tests.ext_authz.oracle import Oracle
from tests.paths import EXAMPLES

POLICY_SET, COMPILED = load_policy([EXAMPLES])
SERVICE = CheckService(SETTINGS, check_timeout=60.0)
SERVICE.policy = COMPILED
ORACLE = Oracle(POLICY_SET, COMPILED, SETTINGS)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_case_gets_its_decision(case: Case) -> None:
    data = case.check_request().SerializeToString()
    outcome = SERVICE.check(data, None)
    ORACLE.judge(data, outcome)  # and an allow is one the documents grant
    if case.grpc_status is not None:
        assert (outcome.status, outcome.body) == (case.grpc_status, b"")
        return
    assert outcome.status == OK
    metadata = dict(CheckResponse.FromString(outcome.body).dynamic_metadata)
    assert (metadata["verdict"], metadata["reason"]) == (case.verdict, case.reason), metadata["reason"]


def test_the_corpus_holds_the_cases_the_issue_lists() -> None:
    names = {case.name for case in CASES}
    assert {
        "host-sni-mismatch", "upper-case-host", "trailing-dot-host", "allowed-name-as-a-prefix-of-another-domain",
        "userinfo-in-the-authority", "percent-encoded-dot-segments", "dot-dot-segment", "ipv4-mapped-ipv6-metadata",
        "decimal-metadata", "octal-metadata", "hex-metadata", "spoofed-xfcc-without-a-trusted-hop",
        "principal-from-another-trust-domain", "spiffe-id-with-dot-dot", "spiffe-id-with-double-slash",
        "spiffe-id-with-a-port", "spiffe-id-with-percent-encoding", "oversized-check-request",
        "dry-run-identity-to-the-metadata-endpoint", "ideographic-full-stop-host", "fullwidth-host", "fullwidth-sni",
    } <= names  # fmt: skip
    assert len(names) == len(CASES)
