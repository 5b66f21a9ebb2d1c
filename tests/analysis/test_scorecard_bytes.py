"""The scorecard's bytes, from an access log joined to the hand-made log
of tests/analysis/scorecard_data.py (every figure worked out beside it):
the top identities by bytes out, the destinations no policy maps by the
bytes they received, and the access log's lines of no check counted."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from authz.analysis.access_log import AccessLogs
from authz.analysis.logs import DecisionLogs
from authz.analysis.metrics import DestinationBytes, IdentityBytes, Scorecard
from authz.analysis.report import to_json, to_markdown
from authz.analysis.scorecard import compute
from authz.policy import load_paths
from tests.analysis.scorecard_data import NOW, PARTNER, PAY, RECORDS, write_log, write_policies
from tests.analysis.test_access_log import line

# RECORDS with decision ids s0, s1, ...: the bytes each allowed check moved (out, in); denies send nothing.
BYTES = {
    0: (10_000, 1_000),  # payments-api, kms.example.com
    1: (20_000, 2_000),  # payments-api, bank.example.com
    2: (3_000, 300),  # payments-api, scoring.example (exception)
    3: (4_000, 400),  # payments-api, scoring.example (exception)
    10: (1_500, 150),  # partner-sync, eu.api-provider.com
    11: (50_000, 5),  # partner-sync, other.example: dry-run, no rule approved it
    12: (70_000, 7),  # the same
    13: (2_500, 250),  # partner-sync, eu.api-provider.com
}


def card_with_bytes(tmp_path: Path) -> Scorecard:
    policies = write_policies(tmp_path / "policies")
    records = [record | {"decision_id": f"s{index}"} for index, record in enumerate(RECORDS)]
    log = write_log(tmp_path / "d.jsonl", records)
    access: list[Any] = [
        line(f"s{index}", *BYTES.get(index, (0, 0))) for index, item in enumerate(records)
    ]  # every check has its line
    access += [line("elsewhere", 999, 9), line(None, 0, 0), "garbage"]
    access_log = tmp_path / "access.log"
    access_log.write_text("".join((a if isinstance(a, str) else json.dumps(a)) + "\n" for a in access))
    with DecisionLogs([str(log)]) as logs:
        return compute(
            logs,
            load_paths([policies]),
            [str(policies)],
            access=AccessLogs([str(access_log)], logs),
            now=datetime.fromisoformat(NOW),
        )


def test_top_identities_by_bytes_out_and_the_bytes_to_destinations_no_rule_approved(tmp_path: Path) -> None:
    card = card_with_bytes(tmp_path)
    assert card.checks == len(RECORDS)  # the access log's lines are not checks
    top = card.bytes_by_identity
    assert (top.computed, top.total_out, top.total_in) == (True, 161_000, 4_112)
    assert top.identities == [
        IdentityBytes(PARTNER, 124_000, 412, 4),
        IdentityBytes(PAY, 37_000, 3_700, 6),
    ]
    unapproved = card.bytes_to_unapproved
    assert (unapproved.computed, unapproved.total_out) == (True, 120_000)
    assert unapproved.destinations == [DestinationBytes("other.example:443", 120_000, 12, 2, 1)]
    access = card.access
    assert access is not None
    assert (access.matched, access.unmatched, access.no_decision_id, access.malformed) == (
        len(RECORDS),
        1,
        1,
        1,
    )


def test_the_reports_show_them_and_say_when_they_are_not_computed(tmp_path: Path) -> None:
    card = card_with_bytes(tmp_path)
    markdown = to_markdown(card)
    assert "**157.2 KiB out, 4.0 KiB in**" in markdown
    assert f"| {PARTNER} | 121.1 KiB | 77.0% | 412 B | 4 |" in markdown
    assert "| other.example:443 | 117.2 KiB | 12 B | 2 | 1 |" in markdown
    assert "1 of no check in the logs, 1 with no decision id; 1 malformed lines skipped" in markdown
    document = to_json(card)
    assert document["bytes_by_identity"]["identities"][0]["bytes_out"] == 124_000
    assert document["access_log"]["unmatched"] == {"lines": 1, "bytes_out": 999, "bytes_in": 9}

    policies = write_policies(tmp_path / "plain" / "policies")
    with DecisionLogs([str(write_log(tmp_path / "plain" / "d.jsonl"))]) as logs:
        plain = compute(logs, load_paths([policies]), [str(policies)], now=datetime.fromisoformat(NOW))
    assert (plain.bytes_by_identity.computed, plain.access) == (False, None)
    assert to_markdown(plain).count("**not computed: pass --access-log**") == 2
