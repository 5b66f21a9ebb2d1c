"""Volume and protocol change against a baseline: the pure comparison as
properties (hypothesis), then both baselines (``--baseline-window`` in the
same logs, ``--compare-to`` other logs) on logs the real engine decided,
with bytes from an access log."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from authz.analysis.access_log import AccessLogs
from authz.analysis.change import against_logs, against_window
from authz.analysis.compare import PROTOCOLS, Comparison, Period, Thresholds, Volume, compare
from authz.analysis.inventory import take_inventory
from authz.analysis.inventory_report import render_markdown, render_text
from authz.analysis.logs import DecisionLogs
from authz.core.request import EgressRequest
from authz.policy.compile import load_policy
from tests.analysis.test_access_log import line
from tests.analysis.traffic import CI, PAYMENTS, ZONE, decided, http, tls, write_log
from tests.paths import EXAMPLES

# -- the comparison, pure ---------------------------------------------------------------------------------

T0 = datetime(2026, 11, 1)
KEYS = [(identity, host, 443) for identity in ("a", "b", None) for host in ("x.example", "y.example")]
_VOLUME = st.builds(
    Volume,
    st.integers(1, 10_000),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.frozensets(st.sampled_from(PROTOCOLS), min_size=1),
)
_FLOWS = st.dictionaries(st.sampled_from(KEYS), _VOLUME, max_size=len(KEYS))
_THRESHOLDS = st.builds(Thresholds, st.floats(1.1, 10), st.integers(1, 50), st.integers(1, 10**6))


def period(days: float, records: int = 0) -> Period:
    return Period(T0, T0 + timedelta(days=days), records)


def run(now: dict, before: dict, now_days: float, before_days: float, thresholds: Thresholds) -> Comparison:  # type: ignore[type-arg]
    return compare(period(now_days), now, period(before_days), before, thresholds, with_bytes=True)


@settings(max_examples=200, deadline=None)
@given(_FLOWS, st.floats(0.01, 30), _THRESHOLDS)
def test_a_period_against_itself_shows_no_change(flows: dict, days: float, thresholds: Thresholds) -> None:  # type: ignore[type-arg]
    result = run(flows, flows, days, days, thresholds)
    assert (result.rises, result.protocol_changes, result.new_pairs) == ((), (), ())


@settings(max_examples=200, deadline=None)
@given(_FLOWS, _FLOWS, st.floats(0.1, 30), st.floats(0.1, 30), _THRESHOLDS)
def test_a_rise_is_exactly_now_at_least_the_floor_and_factor_times_the_scaled_baseline(
    now: dict,
    before: dict,
    now_days: float,
    before_days: float,
    thresholds: Thresholds,  # type: ignore[type-arg]
) -> None:
    result = run(now, before, now_days, before_days, thresholds)
    scale = now_days / before_days
    expected = {}
    for key, volume in now.items():
        if key not in before:
            continue
        rose = []
        for metric, floor in (("requests", thresholds.min_requests), ("bytes_out", thresholds.min_bytes),
                              ("bytes_in", thresholds.min_bytes)):  # fmt: skip
            value, earlier = getattr(volume, metric), getattr(before[key], metric)
            if value >= floor and value >= thresholds.factor * earlier * scale * (1 + 1e-9):
                rose.append(metric)
            elif value >= floor and value >= thresholds.factor * earlier * scale * (1 - 1e-9):
                rose.append("?")  # on the boundary: floating point may go either way
        if rose:
            expected[key] = rose
    found = {(c.identity, c.host, c.port): list(c.rose) for c in result.rises}
    assert set(found) <= set(expected)
    for key, rose in expected.items():
        if "?" not in rose:
            assert found[key] == rose
    assert {(c.identity, c.host, c.port) for c in result.new_pairs} == set(now) - set(before)
    changed = {(c.identity, c.host, c.port): set(c.new_protocols) for c in result.protocol_changes}
    assert changed == {
        key: volume.protocols - before[key].protocols
        for key, volume in now.items()
        if key in before and volume.protocols - before[key].protocols
    }


@settings(max_examples=100, deadline=None)
@given(_FLOWS, _FLOWS, st.integers(1, 50), _THRESHOLDS)
def test_the_baseline_is_scaled_to_this_period(
    now: dict, before: dict, k: int, thresholds: Thresholds
) -> None:  # type: ignore[type-arg]
    """A baseline k times as long with k times the traffic is the same baseline."""
    longer = {
        key: Volume(v.requests * k, v.bytes_out * k, v.bytes_in * k, v.protocols)  # type: ignore[operator]
        for key, v in before.items()
    }
    one, other = run(now, before, 1, 1, thresholds), run(now, longer, 1, k, thresholds)
    assert [(c.identity, c.host, c.rose) for c in one.rises] == [
        (c.identity, c.host, c.rose) for c in other.rises
    ]


@settings(max_examples=100, deadline=None)
@given(_FLOWS)
def test_traffic_multiplied_by_the_factor_rises(before: dict) -> None:  # type: ignore[type-arg]
    thresholds = Thresholds(factor=3, min_requests=1, min_bytes=1)
    now = {
        key: Volume(v.requests * 3, v.bytes_out * 3, v.bytes_in * 3, v.protocols) for key, v in before.items()
    }  # type: ignore[operator]
    result = run(now, before, 1, 1, thresholds)
    for change in result.rises:
        assert "requests" in change.rose
    assert len(result.rises) == len(before)
    assert all(c.ratio("requests") == 3 for c in result.rises)


def test_a_period_that_spans_no_time_is_not_scaled_but_protocols_and_new_pairs_still_count() -> None:
    before = {KEYS[0]: Volume(5, 0, 0, frozenset({"HTTP"}))}
    now = {KEYS[0]: Volume(500, 0, 0, frozenset({"CONNECT"})), KEYS[1]: Volume(1)}
    result = compare(Period(T0, T0, 1), now, period(7), before, Thresholds(), with_bytes=False)
    assert result.scale is None
    assert result.rises == ()
    assert [c.new_protocols for c in result.protocol_changes] == [("CONNECT",)]
    assert [c.host for c in result.new_pairs] == ["y.example"]


# -- both baselines on real decisions ----------------------------------------------------------------------

START = datetime(2026, 11, 1, tzinfo=UTC)  # the baseline week; then the day compared, 2026-11-08


def connect(identity: str, host: str) -> EgressRequest:
    return EgressRequest(identity, host, 443, None, "CONNECT", None, ZONE, None)


def week_and_day() -> tuple[
    list[tuple[datetime, EgressRequest, int]], list[tuple[datetime, EgressRequest, int]]
]:
    """(time, request, bytes out) of the baseline week and of the day after it."""
    week, day = [], []
    for index in range(7 * 4):  # every 6 h for a week
        moment = START + timedelta(hours=6 * index)
        week += [(moment, http(CI, "registry.npmjs.org", path="/left-pad"), 1_000),
                 (moment, http(PAYMENTS, "bank-gateway.example.com", method="POST", path="/v1/payments/1"), 2_000),
                 (moment + timedelta(minutes=1), tls(CI, "github.com"), 500)]  # fmt: skip
    for index in range(24):  # every hour of the day after
        moment = START + timedelta(days=7, hours=index)
        day += [(moment, http(CI, "registry.npmjs.org", path="/left-pad"), 1_000)]  # 24 a day: was 4 a day
        if index % 6 == 0:
            day += [(moment, http(PAYMENTS, "bank-gateway.example.com", method="POST", path="/v1/payments/1"),
                     2_000 * (200 if index == 12 else 1))]  # fmt: skip  # one large upload
            day += [
                (moment + timedelta(minutes=1), connect(CI, "github.com"), 500)
            ]  # a tunnel, was TLS by SNI
    day += [(START + timedelta(days=7, hours=3), http(CI, "pypi.org", path="/simple/"), 100)]  # a new pair
    return week, day


def write_logs(directory: Path, *parts: list[tuple[datetime, EgressRequest, int]]) -> list[Path]:
    """One decision log a part (ids unique across them) and one access log for all."""
    _, compiled = load_policy([EXAMPLES])
    paths, access, offset = [], [], 0
    for number, part in enumerate(parts):
        found = decided(compiled, [(int(moment.timestamp() * 1e9), request) for moment, request, _ in part])
        for index, (record, (_, _, out)) in enumerate(zip(found, part, strict=True)):
            record["decision_id"] = f"d{offset + index}"
            access.append(line(record["decision_id"], out if record["verdict"] == "allow" else 0, 10))
        offset += len(found)
        paths.append(write_log(directory / f"decisions-{number}.jsonl", found))
    paths.append(write_log(directory / "access.log", access))
    return paths


def expect_the_day_s_changes(comparison: Comparison) -> None:
    rises = {(c.identity, c.destination): c for c in comparison.rises}
    npm = rises[CI, "registry.npmjs.org:443"]
    assert npm.rose == ("requests",)  # 24 against 4 a day (its bytes rose as much, but stay under the floor)
    assert (npm.now.requests, npm.before.requests, npm.now.bytes_out) == (24, 28, 24_000)
    bank = rises[PAYMENTS, "bank-gateway.example.com:443"]
    assert bank.rose == ("bytes_out",)  # the same 4 requests; 406 KB against 8 KB a day
    assert (bank.now.bytes_out, bank.before.bytes_out) == (406_000, 56_000)
    assert len(rises) == 2
    (github,) = comparison.protocol_changes
    assert (github.identity, github.destination, github.new_protocols) == (CI, "github.com:443", ("CONNECT",))
    assert github.before.protocols == frozenset({"TLS"})
    assert [(c.identity, c.destination) for c in comparison.new_pairs] == [(CI, "pypi.org:443")]


def test_baseline_window_in_the_same_logs(tmp_path: Path) -> None:
    week, day = week_and_day()
    log, access_log = write_logs(tmp_path, week + day)
    since = START + timedelta(days=7)
    with DecisionLogs([str(log)], since=since, until=since + timedelta(days=1)) as logs:
        access = AccessLogs([str(access_log)], logs)
        inventory = take_inventory(logs, access=access, baseline=(since - timedelta(days=7), since))
        comparison = against_window(
            logs, inventory, (since - timedelta(days=7), since), Thresholds(min_bytes=100_000)
        )
    assert (comparison.baseline.records, comparison.current.records) == (84, 33)
    assert (comparison.baseline.length, comparison.scale) == (timedelta(days=7), 1 / 7)
    expect_the_day_s_changes(comparison)
    inventory = dataclasses.replace(inventory, comparison=comparison)
    text = render_text(inventory)
    assert (
        "Compared with the baseline: 2026-11-01 00:00:00 to 2026-11-08 00:00:00 (7.0 days, 84 decisions)"
        in text
    )
    assert "flows that rose at least 3x, now at least 10 requests or 97.7 KiB a direction: 2" in text
    assert re.search(
        r"\n    spiffe://prod\.example\.org/ns/ci/sa/ci-runner +github\.com:443 +CONNECT +TLS\n", text
    )
    assert re.search(r"ci-runner +pypi\.org:443 +1 +100 B +10 B +HTTP\n", text)  # the new pair
    assert "## Compared with the baseline" in render_markdown(inventory)
    assert inventory.to_dict()["comparison"]["rises"][0]["rose"] in (["requests"], ["bytes_out"])


def test_compare_to_other_logs_finds_the_same(tmp_path: Path) -> None:
    week, day = week_and_day()
    before, now, access_log = write_logs(tmp_path, week, day)
    with DecisionLogs([str(now)]) as logs:
        access = AccessLogs([str(access_log)], logs)
        inventory = take_inventory(logs, access=access)
        comparison = against_logs(
            logs, inventory, [str(before)], [str(access_log)], Thresholds(min_bytes=100_000)
        )
    assert comparison.baseline.files == (str(before),)
    assert comparison.baseline.records == 84
    # each span is from its first to its last record: 6 d 18 h 1 min, and 23 h
    assert comparison.scale is not None
    assert round(comparison.scale, 4) == round(23 * 60 / (6 * 1440 + 18 * 60 + 1), 4)
    expect_the_day_s_changes(comparison)
