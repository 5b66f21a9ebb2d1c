"""A real ``authz serve`` whose metrics show every series the rules and the
dashboard read: a live break-glass exception, a shadow policy that disagrees,
and a few checks of each kind; started once for the monitoring tests."""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authz import EgressRequest
from authz.ext_authz.server import SERVICE_NAME
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest, CheckResponse
from authz.testing import check_request
from tests.e2e.conftest import EXAMPLES, authz_serve, free_port, wait_serving
from tests.monitoring.files import read_names, recorded

CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
PAYMENTS = "spiffe://prod.example.org/ns/payments/sa/payments-api"
CHECKS = (
    EgressRequest(CI, sni="github.com", port=443),  # allowed; the shadow denies it
    EgressRequest(CI, sni="pastebin.com", port=443),  # denied; the shadow allows it
    EgressRequest(PAYMENTS, sni="api.fraud-scoring.example", port=443),  # the break-glass exception
    EgressRequest("spiffe://prod.example.org/ns/x/sa/stranger", sni="github.com", port=443),  # no policy
)
EXPIRES_IN = timedelta(days=2)  # the example exception, moved: EgressAuthzExceptionExpiring fires


@dataclass(frozen=True, slots=True)
class Served:
    metrics_port: int
    exposition: str  # /metrics once every name below was in it
    exception_expires: datetime

    @property
    def names(self) -> set[str]:
        """The sample names exported (a histogram's _bucket, _sum and _count, a counter's _total)."""
        return {
            sample.name
            for family in text_string_to_metric_families(self.exposition)
            for sample in family.samples
        }


def expected_names() -> set[str]:
    """What the rules and the dashboard read from authz (less Prometheus's own `up` and the
    recording rules' outputs)."""
    return set(read_names()) - recorded() - {"up"}


def _policies(directory: Path, expires: datetime) -> Path:
    """The examples, their open exception's expiry set to ``expires`` (the other one,
    bank-cutover, expired long ago as written: its expiry series is in the past)."""
    shutil.copytree(EXAMPLES, directory, ignore=shutil.ignore_patterns("tests"))
    payments = directory / "payments-api.yaml"
    text, count = re.subn(
        r"(- id: backup-fraud-scoring\n(?: {6}.*\n)*? {6}expires: )\S+",
        rf"\g<1>{expires:%Y-%m-%dT%H:%M:%SZ}",
        payments.read_text(),
    )
    assert count == 1
    payments.write_text(text)
    return directory


def _candidate(directory: Path, policies: Path) -> Path:
    """The same policies, but CI's rule ``github`` names pastebin.com instead."""
    shutil.copytree(policies, directory)
    ci = directory / "ci-runner.yaml"
    github = "hosts: [github.com, objects.githubusercontent.com]"
    assert github in ci.read_text()
    ci.write_text(ci.read_text().replace(github, "hosts: [pastebin.com]"))
    return directory


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text: str = reply.read().decode()
        return text


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("monitoring")
    expires = (datetime.now(UTC) + EXPIRES_IN).replace(microsecond=0)
    policies = _policies(directory / "policies", expires)
    candidate = _candidate(directory / "candidate", policies)
    port, metrics_port = free_port(), free_port()
    args = ("--policy", str(policies), "--shadow-policy", str(candidate), "--listen", f"127.0.0.1:{port}",
            "--metrics-port", str(metrics_port), "--transport", "grpcio")  # fmt: skip
    with authz_serve(*args) as server:
        wait_serving(f"127.0.0.1:{port}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = channel.unary_unary(
                f"/{SERVICE_NAME}/Check",
                request_serializer=CheckRequest.SerializeToString,
                response_deserializer=CheckResponse.FromString,
            )
            for request in CHECKS:
                check(check_request(request), timeout=5)
        wanted = expected_names()
        deadline = time.monotonic() + 20  # the telemetry thread counts the shadow's outcome within 20 ms
        exposition = scrape(metrics_port)
        while not wanted <= Served(metrics_port, exposition, expires).names and time.monotonic() < deadline:
            time.sleep(0.1)
            exposition = scrape(metrics_port)
        yield Served(metrics_port, exposition, expires)
        code, stderr = server.stop()
        assert code == 0, stderr
