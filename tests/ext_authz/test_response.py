import json

import pytest
from envoy_data_plane.envoy.config.core.v3 import HeaderValueOptionHeaderAppendAction
from envoy_data_plane.envoy.service.auth.v3 import CheckResponse as EnvoyCheckResponse
from envoy_data_plane.envoy.type.v3 import StatusCode

from authz import EgressRequest, evaluate
from authz.core.decision import Decision
from authz.ext_authz.response import check_response, decision_metadata
from authz.ext_authz.wire.ext_authz_pb2 import CheckResponse
from authz.policy import load_policy
from authz.policy.testcases import request_for
from authz.testing import compile_documents, policy_document
from tests.paths import ROOT

PAYMENTS = "spiffe://prod.example.org/ns/payments/sa/payments-api"
PARTNER = "spiffe://prod.example.org/ns/partners/sa/partner-sync"
POLICY = compile_documents(
    policy_document(
        "payments-api", [PAYMENTS], [{"id": "kms", "hosts": ["kms.example.com"], "ports": [443]}]
    ),
    policy_document("partner-sync", [PARTNER], [], mode="dry-run"),
)
ID = "5fde1f4df8cc8c72f27f5e0797f28717"


def _decide(identity: str | None, host: str) -> Decision:
    return evaluate(POLICY, EgressRequest(identity, host, 443))


def test_allow_is_ok_with_the_decision_id_header_and_metadata() -> None:
    decision = _decide(PAYMENTS, "kms.example.com")
    data = check_response(decision, ID)
    ours = CheckResponse.FromString(data)
    assert ours.status.code == 0
    assert ours.WhichOneof("http_response") == "ok_response"
    theirs = EnvoyCheckResponse.parse(data)
    assert theirs.ok_response is not None
    (option,) = theirs.ok_response.headers
    assert option.header is not None
    assert (option.header.key, option.header.value) == ("x-egress-decision-id", ID)
    assert option.append_action == HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD
    assert theirs.dynamic_metadata is not None
    assert theirs.dynamic_metadata.to_dict() == decision_metadata(decision, ID)
    metadata = dict(ours.dynamic_metadata)
    assert metadata == {
        "decision_id": ID,
        "verdict": "allow",
        "would_deny": False,
        "reason": "ALLOWED_BY_RULE",
        "mode": "enforce",
        "policy": "payments-api",
        "rule": "kms",
        "owner": "team-test",
        "change_ref": "CHG-0",
        "identity": PAYMENTS,
        "destination": "kms.example.com:443",
        "policy_version": "sha256:test",
    }


def test_deny_is_permission_denied_with_a_403_headers_and_json_body() -> None:
    decision = _decide(PAYMENTS, "files.example.net")
    data = check_response(decision, ID)
    theirs = EnvoyCheckResponse.parse(data)
    assert theirs.status is not None
    assert theirs.status.code == 7
    assert theirs.status.message == "NO_MATCHING_RULE"
    denied = theirs.denied_response
    assert denied is not None
    assert denied.status is not None
    assert denied.status.code == StatusCode.Forbidden
    headers = {
        option.header.key: option.header.value for option in denied.headers if option.header is not None
    }
    assert headers == {
        "x-egress-decision": "deny",
        "x-egress-reason": "NO_MATCHING_RULE",
        "x-egress-decision-id": ID,
        "content-type": "application/json",
    }
    assert json.loads(denied.body) == {
        "decision_id": ID,
        "reason": "NO_MATCHING_RULE",
        "identity": PAYMENTS,
        "destination": "files.example.net:443",
    }
    metadata = dict(CheckResponse.FromString(data).dynamic_metadata)
    assert (metadata["verdict"], metadata["would_deny"], metadata["reason"]) == (
        "deny",
        True,
        "NO_MATCHING_RULE",
    )
    assert "rule" not in metadata


def test_deny_without_identity_or_policy_leaves_those_keys_out() -> None:
    data = check_response(_decide(None, "github.com"), ID)
    ours = CheckResponse.FromString(data)
    assert json.loads(ours.denied_response.body)["identity"] is None
    assert set(dict(ours.dynamic_metadata)) == {
        "decision_id", "verdict", "would_deny", "reason", "mode", "destination", "policy_version",
    }  # fmt: skip


def test_dry_run_is_allowed_with_would_deny() -> None:
    data = check_response(_decide(PARTNER, "files.example.net"), ID)
    ours = CheckResponse.FromString(data)
    assert ours.status.code == 0
    metadata = dict(ours.dynamic_metadata)
    assert (metadata["verdict"], metadata["would_deny"], metadata["reason"], metadata["dry_run_reason"]) == (
        "allow",
        True,
        "DRY_RUN",
        "NO_MATCHING_RULE",
    )


@pytest.mark.parametrize("decision_id", ["x", "0" * 200, "é"])
def test_same_decision_other_ids_share_everything_but_the_id(decision_id: str) -> None:
    decision = _decide(PAYMENTS, "files.example.net")
    first = CheckResponse.FromString(check_response(decision, ID))
    second = CheckResponse.FromString(check_response(decision, decision_id))
    assert dict(second.dynamic_metadata) == {**dict(first.dynamic_metadata), "decision_id": decision_id}
    assert json.loads(second.denied_response.body)["decision_id"] == decision_id


def test_rate_limit_headers_name_the_bucket_and_are_set_not_appended() -> None:
    from authz.core.decision import Decision, Mode, Reason, Verdict
    from authz.ext_authz.response import check_response

    allow = Decision(Verdict.ALLOW, Verdict.ALLOW, Reason.ALLOWED_BY_RULE, Mode.ENFORCE, "spiffe://td/ns/a/sa/b",
                     "github.com", 443, "sha256:x", "ci", "github")  # fmt: skip
    response = CheckResponse.FromString(check_response(allow, "d" * 32, rate_limit_headers=True))
    headers = {h.header.key: (h.header.value, h.append_action) for h in response.ok_response.headers}
    assert headers["x-egress-identity"][0] == "spiffe://td/ns/a/sa/b"
    assert headers["x-egress-policy"][0] == "ci"
    assert headers["x-egress-rule"][0] == "github"
    assert {action for _, action in headers.values()} == {2}  # OVERWRITE_IF_EXISTS_OR_ADD
    dry = allow._replace(rule=None)
    response = CheckResponse.FromString(check_response(dry, "d" * 32, rate_limit_headers=True))
    assert {h.header.key: h.header.value for h in response.ok_response.headers}["x-egress-rule"] == "-"
    plain = CheckResponse.FromString(check_response(allow, "d" * 32))
    assert [h.header.key for h in plain.ok_response.headers] == ["x-egress-decision-id"]


def test_no_deny_tells_the_caller_anything_of_the_policy() -> None:
    """Every deny the example policies' own test cases expect: what reaches the
    caller (status message, headers, body) is the reason, the identity and the
    destination, exactly, never a policy, rule, owner, ticket or change."""
    policy_set, compiled = load_policy([ROOT / "policies"])
    reasons = set()
    for loaded in policy_set.tests:
        for case in loaded.model.spec.cases:
            decision = evaluate(compiled, request_for(case))
            if decision.allowed:
                continue
            reasons.add(decision.reason.value)
            denied = EnvoyCheckResponse.parse(check_response(decision, ID))
            assert denied.denied_response is not None
            assert denied.status is not None
            assert denied.status.message == decision.reason.value
            assert json.loads(denied.denied_response.body) == {
                "decision_id": ID, "reason": decision.reason.value,
                "identity": decision.identity, "destination": decision.destination,
            }  # fmt: skip
            headers = {o.header.key: o.header.value for o in denied.denied_response.headers if o.header}
            assert headers == {"x-egress-decision": "deny", "x-egress-reason": decision.reason.value,
                               "x-egress-decision-id": ID, "content-type": "application/json"}  # fmt: skip
    assert len(reasons) >= 5  # the examples deny for many reasons: the test sees them all
