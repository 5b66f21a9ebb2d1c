"""Revocation, containment, break-glass exceptions and dry-run, decided at an injected instant."""

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz import EgressRequest, Mode, Reason, Verdict, evaluate, explain
from authz.core.compiled import CompiledPolicy
from authz.core.decision import DRY_RUN_RELAXES
from authz.policy.compile import CompileOptions
from authz.testing import compile_documents, policy_document, revocation_document

TD = "spiffe://prod.example.org"
CI, PAYMENTS, PARTNER = (
    f"{TD}/ns/ci/sa/ci-runner",
    f"{TD}/ns/payments/sa/payments-api",
    f"{TD}/ns/partners/sa/sync",
)
EXPIRES = datetime(2026, 12, 5, 18, 0, tzinfo=UTC)
BEFORE, AT = EXPIRES.timestamp() - 1, EXPIRES.timestamp()
LOADED = datetime(2026, 11, 23, tzinfo=UTC).timestamp()

EXCEPTION = {"id": "hotfix", "hosts": ["pastebin.com"], "ports": [443], "owner": "alice", "reason": "debugging",
             "ticket": "INC-7", "expires": EXPIRES.isoformat()}  # fmt: skip


def _policy(*revoked: dict[str, Any], mode: Mode = Mode.ENFORCE) -> CompiledPolicy:
    documents = [
        policy_document(
            "ci-runner", [CI],
            [{"id": "github", "hosts": ["github.com"], "ports": [443]},
             {"id": "npm", "hosts": ["registry.npmjs.org"], "ports": [443]},
             {"id": "imds", "hosts": ["169.254.169.254"], "ports": [80]}],
            exceptions=[EXCEPTION, {**EXCEPTION, "id": "later", "expires": "2026-12-10T00:00:00Z"} | {"hosts": ["paste.example"]}],
            zones=["eu"],
        ),
        policy_document("payments", [PAYMENTS], [{"id": "kms", "hosts": ["kms.example"], "ports": [443]}]),
        policy_document("partner", [PARTNER], [], mode="dry-run", exceptions=[EXCEPTION]),
    ]  # fmt: skip
    if revoked:
        documents.append(revocation_document("incident", revoked))
    return compile_documents(*documents, options=CompileOptions(mode=mode, now=LOADED))


POLICY = _policy()


def _tls(identity: str, host: str, zone: str = "eu", port: int = 443) -> EgressRequest:
    return EgressRequest(identity, None, port, host, zone=zone)


def test_an_exception_allows_until_the_instant_it_expires() -> None:
    allowed = evaluate(POLICY, _tls(CI, "pastebin.com"), BEFORE)
    assert (allowed.verdict, allowed.reason, allowed.rule) == (
        Verdict.ALLOW,
        Reason.ALLOWED_BY_EXCEPTION,
        None,
    )
    assert (allowed.exception, allowed.exception_owner, allowed.ticket) == ("hotfix", "alice", "INC-7")
    expired = evaluate(POLICY, _tls(CI, "pastebin.com"), AT)
    assert (expired.verdict, expired.reason, expired.exception) == (
        Verdict.DENY,
        Reason.EXCEPTION_EXPIRED,
        "hotfix",
    )
    assert "has expired (ticket INC-7)" in expired.detail


def test_a_rule_wins_over_an_exception_and_other_destinations_stay_denied() -> None:
    assert evaluate(POLICY, _tls(CI, "github.com"), BEFORE).reason is Reason.ALLOWED_BY_RULE
    assert evaluate(POLICY, _tls(CI, "pastebin.com", port=80), BEFORE).reason is Reason.NO_MATCHING_RULE
    assert evaluate(POLICY, _tls(CI, "example.org"), BEFORE).reason is Reason.NO_MATCHING_RULE


def test_an_exception_is_bound_by_the_policys_zones() -> None:
    assert evaluate(POLICY, _tls(CI, "pastebin.com", zone="us"), BEFORE).reason is Reason.ZONE_NOT_ALLOWED


def test_explain_says_which_exception_and_until_when() -> None:
    steps = explain(POLICY, _tls(CI, "pastebin.com"), BEFORE).steps
    assert steps[-1] == (
        "exception hotfix of ci-runner (owner alice, ticket INC-7) admits pastebin.com:443 until 2026-12-05T18:00:00Z"
    )


def test_the_clock_is_used_when_no_instant_is_given() -> None:
    # The exception expired in 2026-12 relative to now, or is open: either way it is judged by the clock.
    decision = evaluate(POLICY, _tls(CI, "pastebin.com"))
    now = datetime.now(UTC)
    assert decision.reason is (Reason.ALLOWED_BY_EXCEPTION if now < EXPIRES else Reason.EXCEPTION_EXPIRED)


def test_a_revoked_identity_is_denied_whatever_its_policy_says() -> None:
    policy = _policy(
        {
            "identity": CI,
            "reason": "token leaked",
            "by": "alice",
            "ticket": "INC-9",
            "at": "2026-11-23T10:00:00Z",
        }
    )
    for host in ("github.com", "pastebin.com", "bad..name"):
        decision = evaluate(policy, _tls(CI, host), BEFORE)
        assert (decision.verdict, decision.reason, decision.revocation, decision.ticket) == (
            Verdict.DENY, Reason.REVOKED, CI, "INC-9",
        )  # fmt: skip
        assert decision.policy == "ci-runner"
    assert "identity revoked by alice" in decision.detail
    assert evaluate(policy, _tls(PAYMENTS, "kms.example")).reason is Reason.ALLOWED_BY_RULE


def test_a_namespace_in_quarantine() -> None:
    policy = _policy({"identity": f"{TD}/ns/ci/*", "reason": "r", "by": "b", "at": "2026-11-23T10:00:00Z"})
    assert evaluate(policy, _tls(CI, "github.com")).reason is Reason.REVOKED
    assert evaluate(policy, _tls(f"{TD}/ns/ci/sa/other", "github.com")).reason is Reason.REVOKED
    assert evaluate(policy, _tls(PAYMENTS, "kms.example")).reason is Reason.ALLOWED_BY_RULE


def test_an_exact_revocation_is_found_beside_a_prefix() -> None:
    policy = _policy(
        {"identity": f"{TD}/ns/ci/*", "reason": "namespace", "by": "b", "at": "2026-11-23T10:00:00Z"},
        {"identity": CI, "reason": "the runner", "by": "b", "at": "2026-11-23T10:00:00Z",
         "allow_only": [{"hosts": ["registry.npmjs.org"], "ports": [443]}]},
    )  # fmt: skip
    assert evaluate(policy, _tls(CI, "registry.npmjs.org")).reason is Reason.ALLOWED_BY_RULE
    assert evaluate(policy, _tls(f"{TD}/ns/ci/sa/other", "registry.npmjs.org")).reason is Reason.REVOKED


def test_containment_admits_only_allow_only_and_only_as_far_as_the_policy_does() -> None:
    policy = _policy(
        {"identity": CI, "reason": "r", "by": "b", "at": "2026-11-23T10:00:00Z",
         "allow_only": [{"hosts": ["registry.npmjs.org", "broker.example"], "ports": [443]}]},
    )  # fmt: skip
    kept = evaluate(policy, _tls(CI, "registry.npmjs.org"))
    assert (kept.verdict, kept.reason, kept.rule, kept.revocation) == (
        Verdict.ALLOW,
        Reason.ALLOWED_BY_RULE,
        "npm",
        CI,
    )
    assert (
        evaluate(policy, _tls(CI, "github.com")).reason is Reason.REVOKED
    )  # its policy allows it; contained
    assert evaluate(policy, _tls(CI, "registry.npmjs.org", port=8443)).reason is Reason.REVOKED
    assert (
        evaluate(policy, _tls(CI, "broker.example")).reason is Reason.NO_MATCHING_RULE
    )  # never more than policy
    steps = explain(policy, _tls(CI, "registry.npmjs.org")).steps
    assert any("contained: registry.npmjs.org:443 is in its allow_only" in step for step in steps)


def test_dry_run_relaxes_an_expired_exception_but_never_revocation_or_guards() -> None:
    relaxed = evaluate(POLICY, _tls(PARTNER, "pastebin.com"), AT)
    assert (relaxed.verdict, relaxed.reason, relaxed.dry_run_reason) == (
        Verdict.ALLOW, Reason.DRY_RUN, Reason.EXCEPTION_EXPIRED,
    )  # fmt: skip
    policy = _policy({"identity": PARTNER, "reason": "r", "by": "b", "at": "2026-11-23T10:00:00Z"})
    assert evaluate(policy, _tls(PARTNER, "pastebin.com"), BEFORE).verdict is Verdict.DENY


def test_a_rule_naming_a_metadata_endpoint_lifts_that_guard_only() -> None:
    imds = EgressRequest(CI, "169.254.169.254", 80, method="GET", path="/", zone="eu")
    assert evaluate(POLICY, imds).reason is Reason.ALLOWED_BY_RULE
    assert evaluate(POLICY, imds._replace(zone="us")).reason is Reason.ZONE_NOT_ALLOWED
    assert evaluate(POLICY, imds._replace(port=8080)).reason is Reason.METADATA_ENDPOINT


ZONE_DRY_RUN = _policy(mode=Mode.DRY_RUN)


@pytest.mark.parametrize(
    ("request_", "relaxed"),
    [
        (EgressRequest(None, None, 443, "github.com"), Reason.NO_IDENTITY),
        (_tls(f"{TD}/ns/x/sa/unknown", "github.com"), Reason.UNKNOWN_IDENTITY),
        (_tls(CI, "github.com", zone="us"), Reason.ZONE_NOT_ALLOWED),
        (_tls(CI, "example.org"), Reason.NO_MATCHING_RULE),
    ],
)
def test_a_zone_wide_dry_run_relaxes_the_allowlist(request_: EgressRequest, relaxed: Reason) -> None:
    decision = evaluate(ZONE_DRY_RUN, request_)
    assert (decision.verdict, decision.would_verdict, decision.reason, decision.dry_run_reason, decision.mode) == (
        Verdict.ALLOW, Verdict.DENY, Reason.DRY_RUN, relaxed, Mode.DRY_RUN,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (_tls(f"{TD}/ns/../x", "github.com"), Reason.INVALID_IDENTITY),
        (_tls(CI, "bad..name"), Reason.INVALID_DESTINATION),
        (EgressRequest(CI, "github.com", 443, "pastebin.com", "GET", "/", "eu"), Reason.SNI_HOST_MISMATCH),
        (EgressRequest(CI, "169.254.169.254", 443, None, "GET", "/", "eu"), Reason.METADATA_ENDPOINT),
    ],
)
def test_a_zone_wide_dry_run_keeps_the_guards(request_: EgressRequest, reason: Reason) -> None:
    decision = evaluate(ZONE_DRY_RUN, request_)
    assert (decision.verdict, decision.reason) == (Verdict.DENY, reason)


HOSTS = st.sampled_from(["github.com", "pastebin.com", "169.254.169.254", "metadata.google.internal",
                         "registry.npmjs.org", "bad..name", "a.b"])  # fmt: skip
IDENTITIES = st.sampled_from([CI, PAYMENTS, PARTNER, f"{TD}/ns/x/sa/y", f"{TD}/ns/../y", None])


@given(
    IDENTITIES,
    HOSTS,
    st.one_of(st.none(), HOSTS),
    st.sampled_from([80, 443, 8080]),
    st.sampled_from(["eu", "us"]),
)
def test_dry_run_allows_only_what_enforce_denies_for_a_relaxable_reason(
    identity: str | None, host: str, sni: str | None, port: int, zone: str
) -> None:
    """Whatever the request: dry-run turns a deny into an allow only for the allowlist's reasons."""
    request = EgressRequest(identity, host, port, sni, "GET", "/", zone)
    enforced = evaluate(POLICY, request, BEFORE)
    dry = evaluate(ZONE_DRY_RUN, request, BEFORE)
    if enforced.allowed:
        assert dry.allowed
        assert dry.reason is enforced.reason
    elif dry.allowed:
        assert dry.reason is Reason.DRY_RUN
        assert dry.dry_run_reason is enforced.reason
        assert enforced.reason in DRY_RUN_RELAXES
    else:
        assert enforced.reason not in DRY_RUN_RELAXES
