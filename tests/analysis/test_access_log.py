"""``authz inventory --access-log``: Envoy's access-log lines joined to the
decisions by decision id, on logs the real engine decided: bytes per flow and
identity, the lines of no decision counted (never dropped), malformed lines
skipped and counted; and the reading of the lines as a property (hypothesis:
whatever the lines, the counts and sums are a plain Python model's)."""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.analysis.access_log import AccessLogs
from authz.analysis.flowmap import busiest, flow_graph
from authz.analysis.inventory import Inventory, take_inventory
from authz.analysis.inventory_report import render_markdown, render_text
from authz.analysis.logs import DecisionLogs
from tests.analysis.test_inventory import NOW, TRAFFIC, flows
from tests.analysis.traffic import CI, PARTNER, PAYMENTS, records, write_log


def line(decision_id: str | None, out: float, into: float, **fields: Any) -> dict[str, Any]:
    """An access-log line with the keys `authz envoy-config` renders."""
    return {
        "time": "2026-11-02T10:00:00.000Z", "listener": "http_egress", "flags": "-", "decision_id": decision_id,
        "upstream_bytes_sent": out, "upstream_bytes_received": into, "downstream_bytes_received": out,
        "downstream_bytes_sent": into, "duration_ms": 3, "identity": None, "destination": None,
    } | fields  # fmt: skip


def inventory_with(tmp_path: Path, access: list[Any], **window: datetime) -> Inventory:
    log = write_log(tmp_path / "d.jsonl", records(TRAFFIC))  # decision ids d0 .. d14, in TRAFFIC's order
    access_log = write_log(tmp_path / "access.log", access)
    with DecisionLogs([str(log)], **window) as logs:
        return take_inventory(logs, access=AccessLogs([str(access_log)], logs), now=NOW)


ACCESS = [
    line("d0", 300, 5_000_000),  # ci-runner, registry.npmjs.org: a download
    line("d1", 250, 0),
    line("d2", 310.0, 1_200_000.0),  # Envoy writes some counters as 1200000.0
    line("d3", 7_000_000, 4_096, listener="sni_egress"),  # github.com by SNI: the connection's totals
    line("d4", 0, 0, flags="UAEX"),  # pastebin, denied: nothing went
    line("d7", 2_048, 512),  # payments-api, bank-gateway
    line("d11", 9_999, 10),  # partner-sync's dry-run would-deny: it went
    line("gone-1", 1_000, 2_000),  # a decision of another log
    line("gone-2", 10, 20),
    line(None, 0, 0, listener="sni_egress", flags="-"),  # a TLS handshake refused: no check
    line(None, 5, 6),
    "not json",
    json.dumps(line("d5", -1, 0)),  # a negative count
    json.dumps(line("d6", "many", 0)),  # not a number
    json.dumps({"decision_id": "d8"}),  # no counters
    "",  # blank: neither a line nor malformed
]


def test_bytes_per_destination_and_identity_and_every_line_accounted_for(tmp_path: Path) -> None:
    inventory = inventory_with(tmp_path, ACCESS)
    by_identity = flows(inventory)
    npm = by_identity[CI]["registry.npmjs.org:443"]
    assert (npm.bytes_out, npm.bytes_in) == (860, 6_200_000)
    assert (by_identity[CI]["github.com:443"].bytes_out, by_identity[CI]["pastebin.com:443"].bytes_out) == (
        7_000_000,
        0,
    )
    assert (by_identity[PAYMENTS]["bank-gateway.example.com:443"].bytes_in, by_identity[PARTNER][
        "www.pastebin.com:443"].bytes_out) == (512, 9_999)  # fmt: skip
    ci = inventory.identities[0]
    assert (ci.identity, ci.bytes_out, ci.bytes_in) == (CI, 7_000_860, 6_204_096)
    assert (npm.logged, by_identity[PAYMENTS]["api.fraud-scoring.example:443"].logged) == (3, 0)
    access = inventory.access
    assert access is not None
    assert (access.lines, access.malformed, access.matched) == (11, 4, 7)
    assert (access.unmatched, access.unmatched_bytes_out, access.unmatched_bytes_in) == (2, 1_010, 2_020)
    assert (access.no_decision_id, access.no_decision_id_bytes_out, access.no_decision_id_bytes_in) == (
        2,
        5,
        6,
    )
    assert (access.decisions, access.logged, access.repeated) == (15, 7, 0)
    assert inventory.records == 15  # the decisions are what they were without the access log


def test_a_decision_on_two_lines_is_one_record_with_the_bytes_of_both(tmp_path: Path) -> None:
    inventory = inventory_with(tmp_path, [line("d3", 100, 1), line("d3", 50, 2)])
    github = flows(inventory)[CI]["github.com:443"]
    assert (github.records, github.bytes_out, github.bytes_in) == (1, 150, 3)
    assert inventory.access is not None
    assert (inventory.access.matched, inventory.access.logged, inventory.access.repeated) == (2, 1, 1)


def test_lines_of_decisions_outside_the_window_are_neither_counted_in_it_nor_unmatched(
    tmp_path: Path,
) -> None:
    # d0..d2 are at 10:00, 10:05, 11:00; the window starts at 11:00
    inventory = inventory_with(
        tmp_path, ACCESS[:4], since=datetime.fromisoformat("2026-11-02T11:00:00+00:00")
    )
    npm = flows(inventory)[CI]["registry.npmjs.org:443"]
    assert (npm.records, npm.bytes_out) == (1, 310)
    assert inventory.access is not None
    assert (inventory.access.matched, inventory.access.unmatched, inventory.access.logged) == (4, 0, 2)


def test_text_markdown_json_and_the_flow_map_by_bytes(tmp_path: Path) -> None:
    inventory = inventory_with(tmp_path, ACCESS)
    text = render_text(inventory)
    assert re.search(r"W-DENY  BYTES OUT  BYTES IN  FIRST SEEN", text)
    assert re.search(r"registry\.npmjs\.org:443 .* 860 B   5\.9 MiB  2026", text)  # 6,200,000 bytes in
    assert re.search(r"api\.fraud-scoring\.example:443 .* 0 +- +-  2026", text)  # no line: unknown, not 0 B
    assert "2 with a decision id not in these decision logs (1,010 B out, 2.0 KiB in)" in text
    assert "4 malformed lines skipped" in text
    assert "| bytes out | bytes in |" in render_markdown(inventory)
    document = json.loads(json.dumps(inventory.to_dict()))
    assert document["access_log"]["unmatched"] == {"lines": 2, "bytes_out": 1_010, "bytes_in": 2_020}
    assert document["identities"][0]["bytes_out"] == 7_000_860
    shown, _ = busiest(inventory, 2, by="bytes")
    assert [(flows.identity, d.destination) for flows, d in shown] == [
        (CI, "github.com:443"), (CI, "registry.npmjs.org:443"),
    ]  # fmt: skip
    source = flow_graph(inventory, by="bytes").source
    assert "\u21916.7 MiB \u21934.0 KiB" in source  # github.com: 7,000,000 out, 4,096 in
    assert "width: log of the bytes" in source


def test_gzipped_and_rotated_access_logs_are_read_as_one(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", records(TRAFFIC))
    write_log(tmp_path / "access.log", ACCESS[:2])
    (tmp_path / "access.log.1.gz").write_bytes(gzip.compress(json.dumps(ACCESS[3]).encode() + b"\n"))
    with DecisionLogs([str(log)]) as logs:
        access = AccessLogs([str(tmp_path / "access.log*")], logs)
        inventory = take_inventory(logs, access=access, now=NOW)
    assert len(access.files) == 2
    assert inventory.identities[0].bytes_out == 7_000_550


# -- the reading of the lines, as a property ------------------------------------------------------------

_IDS = [f"d{index}" for index in range(len(TRAFFIC))] + ["gone-1", "gone-2", None]
_COUNT = st.one_of(
    st.integers(min_value=0, max_value=2**40), st.integers(min_value=0, max_value=2**40).map(float)
)
_GOOD = st.builds(
    lambda decision_id, out, into, extra, indent: json.dumps(
        line(decision_id, out, into, **extra), indent=indent
    ).replace("\n", " "),
    st.sampled_from(_IDS),
    _COUNT,
    _COUNT,
    st.dictionaries(st.sampled_from(["status", "method", "sni", "flags"]), st.text(max_size=8) | st.none()),
    st.sampled_from([None, 1]),
)
_BAD = st.one_of(
    st.builds(lambda i, v: json.dumps(line(i, v, 0)), st.sampled_from(_IDS), st.integers(max_value=-1)),
    st.builds(
        lambda i, v: json.dumps(line(i, 0, v)), st.sampled_from(_IDS), st.sampled_from([1e19, 1e30, 1e300])
    ),
    st.builds(
        lambda i, v: json.dumps(line(i, 0, v)), st.sampled_from(_IDS), st.text("xyz", min_size=1, max_size=5)
    ),
    st.builds(lambda i: json.dumps({"decision_id": i, "upstream_bytes_sent": 1}), st.sampled_from(_IDS)),
    st.sampled_from(["{", "[1, 2]", "null", "access denied", '{"decision_id": "d1",']).map(str),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), _GOOD, _BAD), max_size=25))
def test_any_lines_give_the_model_s_counts_and_sums(lines: list[tuple[bool, str, str]]) -> None:
    chosen = [good if keep else bad for keep, good, bad in lines]
    known = {f"d{index}" for index in range(len(TRAFFIC))}
    model: Counter[str] = Counter()
    per_id: Counter[str] = Counter()
    for keep, good, _ in lines:
        if not keep:
            model["malformed"] += 1
            continue
        parsed = json.loads(good)
        out, into = round(parsed["upstream_bytes_sent"]), round(parsed["upstream_bytes_received"])
        kind = "matched" if parsed["decision_id"] in known else (
            "unmatched" if parsed["decision_id"] else "no_id")  # fmt: skip
        model[kind] += 1
        model[f"{kind}_out"] += out
        model[f"{kind}_in"] += into
        if kind == "matched":
            per_id[parsed["decision_id"]] += out
    with tempfile.TemporaryDirectory() as directory:
        inventory = inventory_with(Path(directory), chosen)
    access = inventory.access
    assert access is not None
    assert (access.matched, access.unmatched, access.no_decision_id, access.malformed) == (
        model["matched"], model["unmatched"], model["no_id"], model["malformed"],
    )  # fmt: skip
    assert (access.unmatched_bytes_out, access.unmatched_bytes_in) == (
        model["unmatched_out"],
        model["unmatched_in"],
    )
    assert (access.no_decision_id_bytes_out, access.no_decision_id_bytes_in) == (
        model["no_id_out"],
        model["no_id_in"],
    )
    assert sum(flow.bytes_out or 0 for flow in inventory.identities) == model["matched_out"]
    assert access.logged == len(per_id)
    assert inventory.records == len(TRAFFIC)
