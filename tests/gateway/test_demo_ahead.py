"""The demo tour's policy checks a year and three years ahead: each step's
request, as the lab's gateway puts it to authz, decided by the engine at that
instant against the examples moved there (what `make demo` serves on that
day). The real tour, through Envoy, runs at the clock (tests/e2e/test_demo.py);
this runs its decisions at instants the clock has not reached."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from authz.core.compiled import CompiledPolicy
from authz.core.engine import evaluate
from authz.core.request import EgressRequest
from authz.ext_authz.attributes import GatewaySettings, egress_request
from authz.gateway.clients import GatewayClients, Outcome
from authz.gateway.demo import run_tour, table
from authz.gateway.examples import EXAMPLES, copy_examples
from authz.gateway.lab import GATEWAY_NAME, ZONE
from authz.policy.compile import CompileOptions, load_policy
from authz.testing import check_request

SETTINGS = GatewaySettings.create(gateway_names=[GATEWAY_NAME], zone=ZONE, sni_port=443)
NOW = datetime.now(UTC)
AHEAD = {"today": 0, "a-year-ahead": 365, "three-years-ahead": 3 * 365 + 1}


class PolicyGateway(GatewayClients):
    """The lab's three listeners without Envoy: a request becomes the CheckRequest
    its listener sends (HTTPS with the Host the client named, CONNECT with its
    authority, TLS with its SNI on 443), decided at ``now``; a deny is a 403, or a
    closed connection on the SNI listener."""

    def __init__(self, compiled: CompiledPolicy, now: float) -> None:
        self.compiled, self.now = compiled, now

    def _decide(self, request: EgressRequest, *, closes: bool = False) -> Outcome:
        decision = evaluate(self.compiled, egress_request(check_request(request), SETTINGS), self.now)
        headers = {"x-egress-reason": str(decision.reason)}
        if decision.allowed:
            return Outcome(200, headers)
        return Outcome(None, headers, error="connection closed") if closes else Outcome(403, headers)

    def http(self, identity: str | None, host: str, path: str = "/", method: str = "GET", *,
             sni: str | None = None, **_: object) -> Outcome:  # fmt: skip
        return self._decide(EgressRequest(identity, host, None, sni, method, path, ZONE, "https"))

    def tls(self, identity: str | None, server_name: str, path: str = "/", **_: object) -> Outcome:
        return self._decide(EgressRequest(identity, None, 443, server_name, None, None, ZONE), closes=True)

    def connect(self, identity: str | None, authority: str, path: str = "/") -> Outcome:
        host, _, port = authority.rpartition(":")
        return self._decide(EgressRequest(identity, host, int(port), None, "CONNECT", None, ZONE))


def _tour(policies: Path, at: datetime) -> tuple[list[list[str]], int]:
    _, compiled = load_policy([policies], CompileOptions(now=at.timestamp()))
    return run_tour(PolicyGateway(compiled, at.timestamp()))


def _reasons(rows: list[list[str]]) -> dict[str, str]:
    return {row[3]: row[5] for row in rows}


@pytest.mark.parametrize("days", AHEAD.values(), ids=AHEAD.keys())
def test_the_tour_decides_as_today_whatever_the_date(tmp_path: Path, days: int) -> None:
    at = NOW + timedelta(days=days)
    copy_examples(tmp_path / "today", at=NOW)
    copy_examples(tmp_path / "then", at=at)
    rows, failures = _tour(tmp_path / "then", at)
    assert failures == 0, table(rows)
    reasons = _reasons(rows)
    assert reasons == _reasons(_tour(tmp_path / "today", NOW)[0])
    assert (
        reasons["POST api.fraud-scoring.example/v1/score (break-glass exception)"] == "ALLOWED_BY_EXCEPTION"
    )
    expired = "POST legacy.bank-gateway.example.com/v1/payments/settle (exception expired)"
    assert reasons[expired] == "EXCEPTION_EXPIRED"


def test_the_examples_as_they_are_would_fail_the_tour_a_year_ahead(tmp_path: Path) -> None:
    """Why the demo moves them: unmoved, their exception has expired by then."""
    at = NOW + timedelta(days=365)
    shutil.copytree(EXAMPLES, tmp_path / "as-written")
    rows, failures = _tour(tmp_path / "as-written", at)
    assert failures == 1
    (failed,) = [row for row in rows if row[0] == "FAIL"]
    assert (failed[3], failed[5]) == ("POST api.fraud-scoring.example/v1/score (break-glass exception)",
                                      "EXCEPTION_EXPIRED")  # fmt: skip
