import json
import os
from pathlib import Path

import pytest

from tests.telemetry.helpers import CI, PARENT_ID, TRACE_ID, Recorded, decide


def test_an_unsampled_callers_allow_keeps_its_trace_id_in_the_log(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    recorded = Recorded({}, decision_log=str(path))  # default: parent-based
    unsampled = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
    recorded.record(*decide(CI, "github.com"), unsampled)
    recorded.telemetry.shutdown()
    assert recorded.finished() == ()
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert (record["trace_id"], record["sampled"]) == (TRACE_ID, False)
    assert record["span_id"] != PARENT_ID
    assert len(record["span_id"]) == 16


def test_otel_service_name_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "egress-authz-eu-west")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")

    recorded = Recorded({**os.environ, "OTEL_TRACES_SAMPLER": "always_on"})
    recorded.record(*decide(CI, "github.com"))
    (span,) = recorded.finished()
    assert span.resource.attributes["service.name"] == "egress-authz-eu-west"
    assert span.resource.attributes["deployment.environment"] == "prod"
    assert span.resource.attributes["service.version"]
    recorded.telemetry.shutdown()
