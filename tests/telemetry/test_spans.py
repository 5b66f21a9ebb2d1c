import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from authz.telemetry import SPAN_NAME
from authz.telemetry.spans import parent_span_context
from tests.telemetry.helpers import CI, PARENT_ID, TRACE_ID, Recorded, decide


def test_span_carries_the_decision_under_semantic_names(always: Recorded) -> None:
    decision, request = decide(
        CI, "github.com", method="GET", path="/org/repo?x=1", sni="github.com", zone="eu"
    )
    always.record(decision, request)
    (span,) = always.finished()
    assert span.name == SPAN_NAME
    assert span.kind is SpanKind.SERVER
    assert dict(span.attributes or {}) == {
        "egress_authz.would_deny": False,
        "egress_authz.decision_id": "d" * 32,
        "egress_authz.verdict": "allow",
        "egress_authz.reason": "ALLOWED_BY_RULE",
        "egress_authz.mode": "enforce",
        "egress_authz.policy_version": "sha256:test",
        "egress_authz.identity": CI,
        "egress_authz.policy": "ci-runner",
        "egress_authz.rule": "github",
        "egress_authz.owner": "team-platform",
        "egress_authz.change_ref": "CHG-0",
        "egress_authz.zone": "eu",
        "server.address": "github.com",
        "server.port": 443,
        "tls.client.server_name": "github.com",
        "http.request.method": "GET",
        "url.path": "/org/repo",
    }
    assert span.resource.attributes["service.name"] == "egress-authz"
    assert span.resource.attributes["service.version"]


def test_span_joins_the_callers_trace(always: Recorded) -> None:
    decision, request = decide(CI, "github.com")
    always.record(
        decision, request, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "congo=t61"}
    )
    (span,) = always.finished()
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.context.trace_state.get("congo") == "t61"


def test_without_trace_context_the_span_is_a_root(always: Recorded) -> None:
    always.record(*decide(CI, "github.com"))
    (span,) = always.finished()
    assert span.parent is None


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "congo=t61,rojo=00f067aa0ba902b7"},
        {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"},
        {"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01"},
        {"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"},
        {"traceparent": f"01-{TRACE_ID}-{PARENT_ID}-01-future"},
        {"traceparent": f"ff-{TRACE_ID}-{PARENT_ID}-01"},
        {"traceparent": "garbage"},
        {"tracestate": "congo=t61"},
    ],
)
def test_parent_context_agrees_with_the_w3c_propagator(headers: dict[str, str]) -> None:

    ours = parent_span_context(headers)
    theirs = trace.get_current_span(TraceContextTextMapPropagator().extract(headers)).get_span_context()
    if ours is None:
        assert not theirs.is_valid
        return
    assert (ours.trace_id, ours.span_id, ours.trace_flags, ours.is_remote) == (
        theirs.trace_id, theirs.span_id, theirs.trace_flags, theirs.is_remote,
    )  # fmt: skip
    assert theirs.is_valid
    assert dict(ours.trace_state) == dict(theirs.trace_state)
