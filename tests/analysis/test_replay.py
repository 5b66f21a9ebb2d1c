"""Replay: logged requests decided again under a proposed policy set, and
only the changed ones reported, with exact counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from authz.analysis.logs import DecisionLogs
from authz.analysis.replay import replay, request_of
from authz.core.compiled import CompiledPolicy
from authz.core.engine import evaluate
from authz.core.request import EgressRequest
from authz.testing import compile_documents, policy_document
from tests.analysis.helpers import START_NS, write_log

CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
AGENT = "spiffe://prod.example.org/ns/agents/sa/retrieval-agent"
AT = START_NS / 1e9 + 86400


def documents(*, pypi: bool = True, agent_paths: list[str] | None = None) -> list[dict[str, Any]]:
    """Two policies: the CI runner (github, and pypi unless narrowed) and an agent on OpenAI."""
    ci_rules = [{"id": "github", "hosts": ["github.com"], "ports": [443]}]
    if pypi:
        ci_rules.append({"id": "pypi", "hosts": ["pypi.org", "files.pythonhosted.org"], "ports": [443]})
    agent_rule: dict[str, Any] = {"id": "openai", "hosts": ["api.openai.com"], "ports": [443]}
    if agent_paths is not None:
        agent_rule["http"] = {"methods": ["POST"], "paths": agent_paths}
    return [
        policy_document("ci-runner", [CI], ci_rules),
        policy_document("retrieval-agent", [AGENT], [agent_rule]),
    ]


def policy(*, version: str = "sha256:new", **narrowing: Any) -> CompiledPolicy:
    return compile_documents(*documents(**narrowing), version=version)


TRAFFIC = [
    *[EgressRequest(CI, "github.com", 443, "github.com", "GET", "/org/repo.git", "eu", "https")] * 5,
    *[EgressRequest(CI, None, 443, "pypi.org")] * 3,  # TLS connections: SNI only
    EgressRequest(CI, "files.pythonhosted.org", None, None, "GET", "/packages/x.whl", "eu", "https"),
    EgressRequest(CI, "pastebin.com", 443, None, "POST", "/api", "eu", "https"),  # denied already
    *[EgressRequest(AGENT, "api.openai.com", 443, None, "POST", "/v1/chat/completions", "eu", "https")] * 4,
    *[EgressRequest(AGENT, "api.openai.com", 443, None, "GET", "/v1/models", "eu", "https")] * 2,
]


def test_the_same_policy_changes_nothing(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", policy(version="sha256:old"), TRAFFIC)
    with DecisionLogs([str(log)]) as logs:
        result = replay(logs, policy(), at=AT)
    assert (result.records, result.requests, result.unchanged) == (len(TRAFFIC), 6, len(TRAFFIC))
    assert (result.denied, result.allowed, result.reason_changed) == (0, 0, 0)


def test_a_narrowed_policy_reports_exactly_what_it_would_deny(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", policy(version="sha256:old"), TRAFFIC)
    narrowed = policy(pypi=False, agent_paths=["/v1/chat/*"])
    with DecisionLogs([str(log)]) as logs:
        result = replay(logs, narrowed, at=AT, samples=1)
    flows = {(flow.identity, flow.destination): flow for flow in result.flows(denies=True)}
    assert {key: flow.records for key, flow in flows.items()} == {
        (CI, "pypi.org:443"): 3,
        (CI, "files.pythonhosted.org:443"): 1,
        (AGENT, "api.openai.com:443"): 2,
    }
    assert result.denied == 6
    assert result.allowed == 0
    assert dict(flows[(AGENT, "api.openai.com:443")].transitions) == {
        ("ALLOWED_BY_RULE", "NO_MATCHING_RULE"): 2
    }
    (sample,) = flows[(AGENT, "api.openai.com:443")].samples
    assert (sample.request.method, sample.request.path, sample.records) == ("GET", "/v1/models", 2)
    assert result.flows(denies=True)[0].destination == "pypi.org:443"  # largest first


def test_against_a_baseline_set_rather_than_the_log(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", policy(pypi=False), TRAFFIC)  # the log saw pypi denied
    with DecisionLogs([str(log)]) as logs:
        against_log = replay(logs, policy(), at=AT)
        against_baseline = replay(logs, policy(), baseline=policy(version="sha256:same"), at=AT)
    assert (against_log.allowed, against_log.denied) == (4, 0)
    assert (against_baseline.allowed, against_baseline.denied) == (0, 0)


def test_server_errors_are_not_replayed_and_old_records_are_rebuilt(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", policy(), TRAFFIC[:1])
    record = json.loads(log.read_text())
    error = record | {"verdict": "deny", "reason": "TIMEOUT"}
    old = {key: value for key, value in record.items() if key not in ("http_host", "scheme")}
    old_tls = old | {"method": None, "path": None, "host": "pypi.org", "sni": "pypi.org"}
    with log.open("a") as file:
        for extra in (error, old, old_tls):
            file.write(json.dumps(extra) + "\n")
    with DecisionLogs([str(log)]) as logs:
        result = replay(logs, policy(pypi=False), at=AT)
    assert result.not_replayed == 1
    assert (result.records, result.unchanged, result.denied) == (
        3,
        2,
        1,
    )  # the old TLS record: pypi now denied
    assert [flow.destination for flow in result.flows(denies=True)] == ["pypi.org:443"]


IDENTITIES = st.sampled_from([CI, AGENT, None, "spiffe://prod.example.org/ns/x/sa/unknown", "not-spiffe"])
HOSTS = st.sampled_from(
    ["github.com", "GitHub.com.", "pypi.org", "api.openai.com", "169.254.169.254", "bad host"]
)
REQUESTS = st.builds(
    EgressRequest,
    identity=IDENTITIES,
    host=st.none() | HOSTS,
    port=st.sampled_from([None, 80, 443, 8443]),
    sni=st.none() | HOSTS,
    method=st.sampled_from([None, "GET", "POST"]),
    path=st.sampled_from([None, "/", "/v1/chat/x", "/v1/models", "/%2e%2e/x"]),
    zone=st.sampled_from([None, "eu"]),
    scheme=st.sampled_from([None, "http", "https"]),
).filter(lambda r: r.method is not None or r.host is None)  # a connection has no HTTP host


@settings(max_examples=40, deadline=None)
@given(st.lists(REQUESTS, min_size=1, max_size=20))
def test_a_log_replayed_under_its_own_policy_never_changes(tmp_path_factory, requests) -> None:  # type: ignore[no-untyped-def]
    """The log keeps enough to rebuild each request exactly as decided."""
    log = write_log(
        tmp_path_factory.mktemp("replay") / "d.jsonl", policy(agent_paths=["/v1/chat/*"]), requests
    )
    with DecisionLogs([str(log)]) as logs:
        result = replay(logs, policy(agent_paths=["/v1/chat/*"]), at=START_NS / 1e9)
        assert result.records == len(requests)
        assert (result.denied, result.allowed, result.reason_changed) == (0, 0, 0)
    for request in requests:  # and the decision of the rebuilt request is the logged one, field for field
        one = write_log(log.with_suffix(".one"), policy(), [request])
        record = json.loads(one.read_text())
        one.unlink()
        decided = evaluate(policy(), request, START_NS / 1e9)
        assert evaluate(policy(), request_of(record), START_NS / 1e9)._replace(detail="") == decided._replace(
            detail=""
        )
