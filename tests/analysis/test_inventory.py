"""The inventory on small logs the real engine decided: exact counts, first
and last seen, reasons, methods and path prefixes, unknown destinations
(by the log, by a policy), the review against a policy, the window, and
the path-prefix rule as a property."""

from __future__ import annotations

import gzip
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.analysis.inventory import PATH_DEPTH, Destination, Inventory, path_prefix_sql, take_inventory
from authz.analysis.inventory_report import render_markdown, render_text
from authz.analysis.logs import DecisionLogs
from authz.core.rule import parse_path_pattern
from authz.policy import load_policy
from tests.analysis.traffic import (
    CI,
    EXPORTER,
    PARTNER,
    PAYMENTS,
    STRANGER,
    http,
    records,
    tls,
    write_log,
)  # fmt: skip
from tests.paths import EXAMPLES

# Exceptions are judged open or closed at this instant (the example's expires 2026-12-05).
NOW = datetime(2026, 11, 3, tzinfo=UTC).timestamp()

TRAFFIC = [
    ("2026-11-02T10:00:00+00:00", http(CI, "registry.npmjs.org", path="/react/-/react-18.2.0.tgz")),
    ("2026-11-02T10:05:00+00:00", http(CI, "registry.npmjs.org", method="HEAD", path="/react")),
    ("2026-11-02T11:00:00+00:00", http(CI, "registry.npmjs.org", path="/lodash/-/lodash-4.17.21.tgz?x=1")),
    ("2026-11-02T12:00:00+00:00", tls(CI, "github.com")),
    ("2026-11-02T12:30:00+00:00", http(CI, "pastebin.com", method="POST", path="/api/api_post.php")),
    ("2026-11-02T12:31:00+00:00", http(CI, "pastebin.com", method="POST", path="/api/api_post.php")),
    ("2026-11-02T13:00:00+00:00", http(PAYMENTS, "169.254.169.254", path="/latest/meta-data/iam/x", scheme="http")),
    ("2026-11-02T13:10:00+00:00", http(PAYMENTS, "bank-gateway.example.com", method="POST", path="/v1/payments/42")),
    ("2026-11-02T13:20:00+00:00", http(PAYMENTS, "bank-gateway.example.com", method="POST", path="/v1/payments/43",
                                       sni="cdn.evil.example")),
    ("2026-11-02T13:30:00+00:00", http(PAYMENTS, "api.fraud-scoring.example", method="POST", path="/score")),
    ("2026-11-02T14:00:00+00:00", http(PARTNER, "eu.api-provider.com", path="/v2/orders")),
    ("2026-11-02T14:10:00+00:00", http(PARTNER, "www.pastebin.com", method="PUT", path="/x")),
    ("2026-11-02T15:00:00+00:00", http(EXPORTER, "upload.reporting-partner.example", method="PUT", path="/r.csv")),
    ("2026-11-02T16:00:00+00:00", http(STRANGER, "api.openai.com", method="POST", path="/v1/chat/completions")),
    ("2026-11-02T17:00:00+00:00", http(None, "github.com")),
]  # fmt: skip


def inventory_of(log: Path, policy: bool = False, **window: datetime) -> Inventory:
    loaded = load_policy([EXAMPLES]) if policy else None
    with DecisionLogs([str(log)], **window) as logs:
        return take_inventory(logs, loaded, now=NOW)


def flows(inventory: Inventory) -> dict[str | None, dict[str, Destination]]:
    return {f.identity: {d.destination: d for d in f.destinations} for f in inventory.identities}


def test_per_identity_destinations_with_exact_counts_times_reasons_methods_and_paths(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", records(TRAFFIC))
    inventory = inventory_of(log)
    assert (inventory.records, inventory.malformed, inventory.files) == (15, 0, (str(log),))
    assert (inventory.first, inventory.last) == (datetime(2026, 11, 2, 10), datetime(2026, 11, 2, 17))
    ci = inventory.identities[0]
    assert (ci.identity, ci.records, ci.allow, ci.deny, ci.would_deny) == (CI, 6, 4, 2, 0)
    assert (ci.first_seen, ci.last_seen, ci.policies) == (
        datetime(2026, 11, 2, 10), datetime(2026, 11, 2, 12, 31), ("ci-runner",)
    )  # fmt: skip
    assert [d.destination for d in ci.destinations] == [
        "registry.npmjs.org:443",
        "pastebin.com:443",
        "github.com:443",
    ]
    npm, pastebin, github = ci.destinations
    assert (npm.records, npm.first_seen, npm.last_seen) == (
        3,
        datetime(2026, 11, 2, 10),
        datetime(2026, 11, 2, 11),
    )
    assert npm.reasons == {"ALLOWED_BY_RULE": 3}
    assert npm.rules == {"ci-runner/npm-registry": 3}
    assert npm.methods == {"GET": 2, "HEAD": 1}
    # Two segments kept; the query cut off; a path of one segment stays whole.
    assert npm.paths == {"/lodash/-/*": 1, "/react": 1, "/react/-/*": 1}
    assert (npm.outcome, npm.unknown, npm.zones) == ("allow", False, ("eu-west-prod",))
    assert (pastebin.deny, pastebin.reasons, pastebin.outcome, pastebin.unknown) == (
        2, {"NO_MATCHING_RULE": 2}, "deny", True
    )  # fmt: skip
    assert (github.methods, github.paths, github.reasons) == ({}, {}, {"ALLOWED_BY_RULE": 1})

    by_identity = flows(inventory)
    bank = by_identity[PAYMENTS]["bank-gateway.example.com:443"]
    assert bank.reasons == {"ALLOWED_BY_RULE": 1, "SNI_HOST_MISMATCH": 1}
    assert (bank.outcome, bank.unknown, bank.sni_mismatch) == ("mixed", False, 0)
    assert by_identity[PAYMENTS]["169.254.169.254:80"].reasons == {"METADATA_ENDPOINT": 1}
    fraud = by_identity[PAYMENTS]["api.fraud-scoring.example:443"]
    assert (fraud.reasons, fraud.rules, fraud.unknown) == (
        {"ALLOWED_BY_EXCEPTION": 1}, {"payments-api/backup-fraud-scoring": 1}, False
    )  # fmt: skip
    dry = by_identity[PARTNER]["www.pastebin.com:443"]
    assert (dry.allow, dry.would_deny, dry.outcome, dry.reasons, dry.unknown) == (
        0, 1, "would-deny", {"DRY_RUN": 1}, True
    )  # fmt: skip
    assert by_identity[EXPORTER]["upload.reporting-partner.example:443"].reasons == {"REVOKED": 1}
    assert by_identity[STRANGER]["api.openai.com:443"].reasons == {"UNKNOWN_IDENTITY": 1}
    nobody = by_identity[None]["github.com:443"]
    assert (nobody.reasons, nobody.unknown) == ({"NO_IDENTITY": 1}, True)
    assert inventory.identities[-1].identity is None  # the no-identity bucket comes last among equals


def test_unknown_by_policy_and_the_review_against_it(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", records(TRAFFIC))
    inventory = inventory_of(log, policy=True)
    assert inventory.unknown_by == "policy"
    unknown = {(f.identity, d.destination) for f in inventory.identities for d in f.destinations if d.unknown}
    assert unknown == {
        (CI, "pastebin.com:443"),
        (PAYMENTS, "169.254.169.254:80"),
        (PARTNER, "www.pastebin.com:443"),
        (STRANGER, "api.openai.com:443"),  # no policy names the identity
        (None, "github.com:443"),
    }  # the exporter's destination is in its (revoked) policy: known, though REVOKED
    review = inventory.review
    assert review is not None
    used = {(rule.policy, rule.id): rule.records for rule in review.rules}
    assert used[("ci-runner", "npm-registry")] == 3
    assert used[("ci-runner", "github")] == 1
    assert used[("payments-api", "backup-fraud-scoring")] == 1
    assert {(rule.policy, rule.id, rule.kind) for rule in review.unused_rules} == {
        ("analytics-etl", "warehouse", "rule"), ("analytics-etl", "buckets", "rule"),
        ("ci-runner", "pypi", "rule"), ("payments-api", "kms", "rule"),
        ("reporting-exporter", "partner-upload", "rule"), ("retrieval-agent", "vector-store", "rule"),
        ("support-jump", "idp", "rule"), ("support-jump", "pam", "rule"),
        ("support-jump", "monitoring", "rule"), ("support-jump", "ticketing", "rule"),
        ("payments-api", "bank-cutover", "exception"),
    }  # fmt: skip
    kms = next(rule for rule in review.rules if rule.id == "kms")
    assert (Path(kms.file).name, kms.line, kms.hosts, kms.last_used) == (
        "payments-api.yaml", 19, ("kms.eu-west-1.amazonaws.com",), None
    )  # fmt: skip
    assert set(review.unseen_identities) == {
        ("analytics-etl", "spiffe://prod.example.org/ns/analytics/*"),
        ("retrieval-agent", "spiffe://prod.example.org/ns/agents/sa/retrieval-agent"),
        ("support-jump", "spiffe://prod.example.org/ns/support/sa/support-jump"),
    }
    assert review.identities_without_policy == (STRANGER,)


def test_a_namespace_prefix_is_seen_through_any_identity_below_it(tmp_path: Path) -> None:
    etl = "spiffe://prod.example.org/ns/analytics/sa/etl-7"
    log = write_log(
        tmp_path / "d.jsonl",
        records([("2026-11-02T10:00:00+00:00", tls(etl, "warehouse.internal.example.org"))]),
    )
    review = inventory_of(log, policy=True).review
    assert review is not None
    assert ("analytics-etl", "spiffe://prod.example.org/ns/analytics/*") not in review.unseen_identities
    assert review.identities_without_policy == ()


def test_malformed_lines_are_counted_and_rotated_files_read_by_glob(tmp_path: Path) -> None:
    lines = records(TRAFFIC[:6])
    write_log(tmp_path / "d.jsonl", [lines[0], "not json", lines[1]])
    write_log(tmp_path / "d.jsonl.1", [lines[2], '{"time": "2026-11-02T10:00:00Z", "verdict": "perhaps"}'])
    with gzip.open(tmp_path / "d.jsonl.2.gz", "wt") as file:
        file.write("".join(json.dumps(line) + "\n" for line in lines[3:]) + "{cut off\n")
    with DecisionLogs([str(tmp_path / "d.jsonl*")]) as logs:
        inventory = take_inventory(logs)
    assert [Path(name).name for name in inventory.files] == ["d.jsonl", "d.jsonl.1", "d.jsonl.2.gz"]
    assert (inventory.records, inventory.malformed) == (6, 3)
    assert [d.records for d in inventory.identities[0].destinations] == [3, 2, 1]


def test_the_window_selects_records_and_malformed_lines_count_in_any_window(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", [*records(TRAFFIC), "garbage"])
    inventory = inventory_of(
        log, since=datetime(2026, 11, 2, 12, tzinfo=UTC), until=datetime(2026, 11, 2, 13)
    )
    assert (inventory.records, inventory.malformed) == (3, 1)
    assert [(d.destination, d.records) for d in inventory.identities[0].destinations] == [
        ("pastebin.com:443", 2), ("github.com:443", 1)
    ]  # fmt: skip
    assert inventory.to_dict()["window"] == {
        "since": "2026-11-02T12:00:00.000Z", "until": "2026-11-02T13:00:00.000Z",
        "first": "2026-11-02T12:00:00.000Z", "last": "2026-11-02T12:31:00.000Z",
    }  # fmt: skip


def test_an_empty_window_is_an_empty_inventory(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", records(TRAFFIC[:2]))
    inventory = inventory_of(log, since=datetime(2030, 1, 1, tzinfo=UTC))
    assert (inventory.records, inventory.identities, inventory.first) == (0, (), None)
    assert "Inventory of 0 decisions" in render_text(inventory)


def test_methods_and_paths_keep_the_busiest_and_count_the_rest(tmp_path: Path) -> None:
    traffic = [
        (f"2026-11-02T10:{minute:02d}:00+00:00", http(CI, "registry.npmjs.org", path=f"/p{minute % 12}/x/y"))
        for minute in range(24)
    ] + [("2026-11-02T11:00:00+00:00", http(CI, "registry.npmjs.org", path="/p0/x/z"))]
    inventory = inventory_of(write_log(tmp_path / "d.jsonl", records(traffic)))
    (npm,) = inventory.identities[0].destinations
    assert len(npm.paths) == 10
    assert next(iter(npm.paths.items())) == ("/p0/x/*", 3)
    assert sum(npm.paths.values()) + npm.other_paths == 25
    assert npm.other_paths == 4  # /p8/x/* and /p9/x/* (2 each): the ten busiest win, ties by name


def test_json_keys_are_the_documented_contract(tmp_path: Path) -> None:
    inventory = inventory_of(write_log(tmp_path / "d.jsonl", records(TRAFFIC)), policy=True)
    document = json.loads(json.dumps(inventory.to_dict()))
    assert set(document) == {
        "files", "window", "records", "malformed", "unknown_by", "identities", "policy", "access_log", "comparison",
    }  # fmt: skip
    assert [document["access_log"], document["comparison"]] == [None, None]  # no --access-log, --compare-to
    identity = document["identities"][0]
    assert set(identity) == {
        "identity", "records", "first_seen", "last_seen", "allow", "deny", "would_deny", "policies", "bytes_out",
        "bytes_in", "destinations",
    }  # fmt: skip
    assert set(identity["destinations"][0]) == {
        "destination", "host", "port", "records", "first_seen", "last_seen", "allow", "deny", "would_deny",
        "outcome", "reasons", "rules", "methods", "other_methods", "paths", "other_paths", "zones", "sni_mismatch",
        "unknown", "bytes_out", "bytes_in", "logged",
    }  # fmt: skip
    assert (identity["bytes_out"], identity["destinations"][0]["bytes_in"]) == (None, None)  # unknown, not 0
    assert set(document["policy"]) == {
        "version", "rules", "unused_rules", "unseen_identities", "identities_without_policy"
    }  # fmt: skip
    assert set(document["policy"]["rules"][0]) == {
        "policy", "id", "kind", "hosts", "records", "last_used", "file", "line"
    }  # fmt: skip


def test_text_and_markdown_mark_unknowns_and_defuse_what_callers_wrote(tmp_path: Path) -> None:
    hostile = "/a|b`c\x1b[31m/d/e"
    traffic = [*TRAFFIC, ("2026-11-02T18:00:00+00:00", http(CI, "pastebin.com", method="POST", path=hostile))]
    inventory = inventory_of(write_log(tmp_path / "d.jsonl", records(traffic)))
    text = render_text(inventory)
    assert "\x1b" not in text
    assert "  ! pastebin.com:443" in text
    assert "    registry.npmjs.org:443" in text
    assert "(no identity)" in text
    markdown = render_markdown(inventory)
    assert "\x1b" not in markdown
    assert "| **`pastebin.com:443`** ⚠ |" in markdown
    row = next(line for line in markdown.splitlines() if "pastebin.com:443`** ⚠" in line and CI not in line)
    assert row.count(" | ") == 8  # nine cells: the path's | is escaped, its backtick replaced
    assert "/a\\|b'c?[31m/d/*" in row


def _bare(path: str) -> str:
    return re.split("[?#]", path, maxsplit=1)[0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="/ab?#.%-", max_size=14), min_size=1, max_size=30))
def test_a_path_prefix_covers_its_path_and_keeps_at_most_the_first_segments(paths: list[str]) -> None:
    rows = duckdb.execute(
        f"SELECT path, {path_prefix_sql('path')} FROM (SELECT unnest(?::VARCHAR[]) AS path)", [paths]
    ).fetchall()
    prefix_of: dict[str, str] = dict(rows)
    heads = {}
    for path, prefix in prefix_of.items():
        bare = _bare(path)
        segments = bare.split("/")[1:]
        if bare.startswith("/") and len(segments) > PATH_DEPTH:
            # As a rule's path, the prefix admits the path; it names the first segments only.
            assert parse_path_pattern(prefix).matches(bare)
            assert prefix == "/" + "/".join(segments[:PATH_DEPTH]) + "/*"
            heads[path] = tuple(segments[:PATH_DEPTH])
        else:
            assert prefix == bare  # a short path (or no absolute one) stays whole
    for one, head in heads.items():  # deep paths share a prefix exactly when their first segments agree
        for other, other_head in heads.items():
            assert (prefix_of[one] == prefix_of[other]) == (head == other_head)


def test_parquet_and_json_lines_together(tmp_path: Path) -> None:
    lines = records(TRAFFIC[:4])
    source = write_log(tmp_path / "shipped.jsonl", lines[:3])
    duckdb.sql(
        f"COPY (SELECT * FROM read_json('{source}')) TO '{tmp_path / 'shipped.parquet'}' (FORMAT parquet)"
    )
    current = write_log(tmp_path / "d.jsonl", [lines[3], "}{"])
    with DecisionLogs([str(tmp_path / "shipped.parquet"), str(current)]) as logs:
        inventory = take_inventory(logs)
    assert (inventory.records, inventory.malformed) == (4, 1)
    assert [(d.destination, d.records) for d in inventory.identities[0].destinations] == [
        ("registry.npmjs.org:443", 3), ("github.com:443", 1)
    ]  # fmt: skip
