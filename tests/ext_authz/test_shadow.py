"""`authz serve --shadow-policy` in-process, over real gRPC: the answers are
the served policy's, bit for bit; the candidate's outcome is recorded; its
files reload by themselves, a bad change keeping the last good candidate."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from authz import EgressRequest
from authz.core.compiled import ServicePolicy
from authz.core.decision import Mode
from authz.ext_authz.health import NOT_SERVING
from authz.ext_authz.server import Server
from authz.ext_authz.wire.ext_authz_pb2 import CheckResponse
from authz.policy import PolicyError, load_policy
from authz.policy.testcases import request_for
from authz.telemetry import Telemetry, TelemetryConfig
from authz.testing import check_request
from tests.ext_authz.test_server import Running, _config, serving
from tests.paths import EXAMPLES
from tests.telemetry.helpers import metric_points

CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
GITHUB = EgressRequest(CI, sni="github.com", port=443)
PASTEBIN = EgressRequest(CI, sni="pastebin.com", port=443)
SETTLE = EgressRequest("spiffe://prod.example.org/ns/payments/sa/payments-api", "bank-gateway.example.com",
                       443, method="POST", path="/v1/payments/settle")  # fmt: skip


def candidate_policies(directory: Path) -> Path:
    """The example policies, but CI's rule ``github`` names pastebin.com instead (a copy in ``directory``)."""
    shutil.copytree(EXAMPLES, directory, ignore=shutil.ignore_patterns("tests"))
    ci = directory / "ci-runner.yaml"
    github = "hosts: [github.com, objects.githubusercontent.com]"
    assert github in ci.read_text()
    ci.write_text(ci.read_text().replace(github, "hosts: [pastebin.com]"))
    return directory


class Recording:
    """A Telemetry with in-memory spans and metrics and a decision log file."""

    def __init__(self, directory: Path, environ: dict[str, str] | None = None) -> None:
        directory.mkdir(exist_ok=True)
        self.log = directory / "decisions.jsonl"
        self.spans = InMemorySpanExporter()
        self.metrics = InMemoryMetricReader()
        self.telemetry = Telemetry(
            TelemetryConfig(environ or {"OTEL_TRACES_SAMPLER": "always_on"}, decision_log=str(self.log)),
            span_processor=SimpleSpanProcessor(self.spans),
            metric_readers=[self.metrics],
        )

    def records(self, count: int) -> list[dict[str, Any]]:
        """The decision log once it holds ``count`` records (its own thread writes them)."""
        self.telemetry.flush()
        lines: list[str] = []
        for _ in range(500):  # bounded: 5 s
            lines = self.log.read_text().splitlines() if self.log.exists() else []
            if len(lines) >= count:
                break
            time.sleep(0.01)
        return [json.loads(line) for line in lines]

    def points(self, name: str) -> dict[tuple[str, ...], int]:
        return {tuple(p.attributes.values()): p.value for p in metric_points(self.metrics, name)}


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[Recording]:
    recording = Recording(tmp_path)
    yield recording
    recording.telemetry.shutdown()


async def _answers(running: Running, requests: list[EgressRequest]) -> list[bytes]:
    """The response bytes, each with its decision id (random) made all zeros."""
    answers = []
    for request in requests:
        raw: bytes = await running.raw(check_request(request).SerializeToString(), timeout=5)
        decision_id = str(dict(CheckResponse.FromString(raw).dynamic_metadata)["decision_id"])
        answers.append(raw.replace(decision_id.encode(), b"0" * 32))
    return answers


def _example_requests() -> list[EgressRequest]:
    policy_set, _ = load_policy([EXAMPLES])
    cases = [case for loaded in policy_set.tests for case in loaded.model.spec.cases if case.at is None]
    return [request_for(case) for case in cases] + [GITHUB, PASTEBIN]


async def test_the_answers_are_the_same_bytes_with_and_without_a_shadow_policy(tmp_path: Path) -> None:
    requests = _example_requests()
    candidate = candidate_policies(tmp_path / "candidate")
    answers = {}
    for shadow in ((), (str(candidate),)):
        recording = Recording(tmp_path / str(len(shadow)))
        try:
            async with serving(_config(shadow_policy_paths=shadow), recording.telemetry) as running:
                answers[shadow] = await _answers(running, requests)
                records = recording.records(len(requests))
        finally:
            recording.telemetry.shutdown()
        assert len(records) == len(requests)
        assert all((r["shadow_verdict"] is None) is (not shadow) for r in records)
    assert answers[()] == answers[(str(candidate),)]


async def test_disagreements_reach_the_decision_log_the_span_and_the_metrics(
    tmp_path: Path, recording: Recording
) -> None:
    candidate = candidate_policies(tmp_path / "candidate")
    version = load_policy([candidate])[1].version
    async with serving(_config(shadow_policy_paths=(str(candidate),)), recording.telemetry) as running:
        for request in (GITHUB, PASTEBIN, SETTLE):
            await running.decide(request)
        records = recording.records(3)
    assert [(r["destination"], r["verdict"], r["shadow_verdict"], r["shadow_reason"]) for r in records] == [
        ("github.com:443", "allow", "deny", "NO_MATCHING_RULE"),
        ("pastebin.com:443", "deny", "allow", "ALLOWED_BY_RULE"),
        ("bank-gateway.example.com:443", "allow", "allow", "ALLOWED_BY_RULE"),
    ]
    assert {r["shadow_policy_version"] for r in records} == {version}
    spans = {(s.attributes or {})["egress_authz.decision_id"]: s.attributes or {} for s in recording.spans.get_finished_spans()}  # fmt: skip
    assert [spans[r["decision_id"]]["egress_authz.shadow.disagrees"] for r in records] == [True, True, False]
    assert spans[records[0]["decision_id"]]["egress_authz.shadow.policy_version"] == version
    assert recording.points("egress_authz.shadow.disagreements") == {
        ("allow", "deny", "NO_MATCHING_RULE", "ci-runner", "team-platform"): 1,
        ("deny", "allow", "ALLOWED_BY_RULE", "ci-runner", "team-platform"): 1,
    }
    assert recording.points("egress_authz.shadow.checks") == {("disagree",): 2, ("agree",): 1}
    assert recording.points("egress_authz.shadow.policy.info") == {(version,): 1}
    assert recording.points("egress_authz.shadow.reloads") == {("applied",): 1}


async def test_a_raising_shadow_changes_no_answer(tmp_path: Path, recording: Recording) -> None:
    class Raising(dict[str, ServicePolicy]):
        def get(self, *_: object) -> Any:
            raise RuntimeError("broken candidate")

    async with serving(_config()) as plain:
        expected = await _answers(plain, [GITHUB, PASTEBIN])
    config = _config(shadow_policy_paths=(str(candidate_policies(tmp_path / "candidate")),))
    async with serving(config, recording.telemetry) as running:
        shadow = recording.telemetry.shadow
        assert shadow.policy is not None
        shadow.policy = dataclasses.replace(shadow.policy, by_identity=Raising())
        assert await _answers(running, [GITHUB, PASTEBIN]) == expected
        assert [r["shadow_reason"] for r in recording.records(2)] == ["INTERNAL_ERROR"] * 2
    assert recording.points("egress_authz.shadow.checks") == {("error",): 2}


async def test_zone_wide_dry_run_is_the_served_policys_the_shadow_decides_in_its_files_modes(
    recording: Recording,
) -> None:
    config = _config(mode=Mode.DRY_RUN, shadow_policy_paths=(str(EXAMPLES),))
    async with serving(config, recording.telemetry) as running:
        response = await running.decide(PASTEBIN)
        assert response.status.code == 0  # allowed: the zone is in dry-run
        (record,) = recording.records(1)
    assert (record["verdict"], record["reason"], record["mode"]) == ("allow", "DRY_RUN", "dry-run")
    assert (record["shadow_verdict"], record["shadow_reason"]) == ("deny", "NO_MATCHING_RULE")


async def test_the_shadow_set_reloads_by_itself_and_a_bad_change_keeps_the_last_good_one(
    tmp_path: Path, recording: Recording
) -> None:
    candidate = candidate_policies(tmp_path / "candidate")
    first = load_policy([candidate])[1].version
    config = _config(shadow_policy_paths=(str(candidate),))
    async with serving(config, recording.telemetry) as running:
        server = running.server
        assert server.shadow_reloader is not None
        stop = asyncio.Event()
        watching = asyncio.create_task(server.watch(stop, files=False))  # SIGHUP only
        ci = candidate / "ci-runner.yaml"
        ci.write_text(ci.read_text().replace("pastebin.com", "gist.github.com"))
        second = load_policy([candidate])[1].version
        shadow = recording.telemetry.shadow
        for _ in range(500):  # bounded: 5 s
            server.request_reload()  # what SIGHUP does (asked again until the watchers are up)
            await asyncio.sleep(0.01)
            if shadow.policy is not None and shadow.policy.version == second:
                break
        assert shadow.policy is not None
        assert shadow.policy.version == second != first
        await running.decide(PASTEBIN)
        ci.write_text("not: [valid\n")
        assert not await server.shadow_reloader.reload()
        assert (await running.decide(GITHUB)).status.code == 0  # the served policy is untouched
        stop.set()
        await watching
        records = recording.records(2)
    assert [(r["shadow_verdict"], r["shadow_policy_version"]) for r in records] == [
        ("deny", second),  # pastebin is no longer in the candidate
        ("deny", second),  # the bad change did not replace the last good candidate
    ]
    assert recording.points("egress_authz.shadow.reloads") == {("applied",): 2, ("rejected",): 1}
    assert recording.points("egress_authz.policy.reloads") == {("applied",): 1}  # counted apart
    assert {r["policy_version"] for r in records} == {load_policy([EXAMPLES])[1].version}


async def test_a_bad_shadow_set_stops_the_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: egress-authz/v1\nkind: EgressPolicy\nmetadata: {name: x}\nspec: {}\n")
    server = Server(_config(shadow_policy_paths=(str(bad),)))
    with pytest.raises(PolicyError) as raised:
        await server.load()
    assert all(problem.file == str(bad) for problem in raised.value.problems)
    assert server.health.of("") == NOT_SERVING
