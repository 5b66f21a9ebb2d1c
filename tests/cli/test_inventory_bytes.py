"""``authz inventory --access-log`` and the comparison flags as a user runs
them: the bytes in every output, the flow map by bytes, a baseline window or
other logs, and exit 2 with a clear message for what does not fit."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from tests.analysis.test_access_log import ACCESS
from tests.analysis.test_compare import START, week_and_day, write_logs
from tests.analysis.test_inventory import TRAFFIC
from tests.analysis.traffic import CI, records, write_log
from tests.cli.helpers import run_authz


@pytest.fixture
def logs(tmp_path: Path) -> tuple[Path, Path]:
    return write_log(tmp_path / "decisions.jsonl", records(TRAFFIC)), write_log(
        tmp_path / "access.log", ACCESS
    )


def test_access_log_bytes_in_text_json_and_markdown(logs: tuple[Path, Path]) -> None:
    log, access = logs
    text = run_authz("inventory", str(log), "--access-log", str(access))
    assert text.returncode == 0, text.stderr
    assert "  access log: 11 lines from 1 file (4 malformed lines skipped)\n" in text.stdout
    assert "    2 with a decision id not in these decision logs (1,010 B out, 2.0 KiB in)\n" in text.stdout
    assert "6 records: 4 allowed, 2 denied, 6.7 MiB out, 5.9 MiB in, " in text.stdout
    document = json.loads(run_authz("inventory", str(log), "--access-log", str(access), "--json").stdout)
    assert document["access_log"]["no_decision_id"] == {"lines": 2, "bytes_out": 5, "bytes_in": 6}
    (ci,) = [flows for flows in document["identities"] if flows["identity"] == CI]
    assert (ci["bytes_out"], ci["bytes_in"]) == (7_000_860, 6_204_096)
    markdown = run_authz("inventory", str(log), "--access-log", str(access), "--markdown").stdout
    assert "| bytes out | bytes in |" in markdown


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed (Debian: graphviz)")
def test_the_flow_map_by_bytes(logs: tuple[Path, Path], tmp_path: Path) -> None:
    log, access = logs
    svg = tmp_path / "flows.svg"
    result = run_authz(
        "inventory", str(log), "--access-log", str(access), "--graph", str(svg), "--by", "bytes",
        "--graph-edges", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        result.stderr
        == f"flow map: {svg} (3 of 11 identity-destination pairs; 8 pairs (10 records, 2.5 KiB) left out)\n"
    )
    picture = svg.read_text()
    assert "\u21916.7 MiB \u21934.0 KiB" in picture  # github.com, the pair that moved the most


def test_baseline_window_and_compare_to(tmp_path: Path) -> None:
    week, day = week_and_day()
    (tmp_path / "one").mkdir()
    log, access = write_logs(tmp_path / "one", week + day)
    since = (START + timedelta(days=7)).isoformat()
    result = run_authz(
        "inventory", str(log), "--access-log", str(access), "--since", since, "--baseline-window", "7d",
        "--min-bytes", "100KB", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    comparison = json.loads(result.stdout)["comparison"]
    assert comparison["baseline"]["records"] == 84
    assert {(rise["destination"], tuple(rise["rose"])) for rise in comparison["rises"]} == {
        ("registry.npmjs.org:443", ("requests",)), ("bank-gateway.example.com:443", ("bytes_out",)),
    }  # fmt: skip
    assert [change["new_protocols"] for change in comparison["protocol_changes"]] == [["CONNECT"]]
    (tmp_path / "two").mkdir()
    before, now, both = write_logs(tmp_path / "two", week, day)
    text = run_authz("inventory", str(now), "--compare-to", str(before), "--access-log", str(both),
                     "--factor", "5", "--min-requests", "20")  # fmt: skip
    assert text.returncode == 0, text.stderr
    assert (
        "\nCompared with the baseline: 2026-11-01 00:00:00 to 2026-11-07 18:01:00 (6.8 days, 84 decisions)"
        in (text.stdout)
    )
    assert "flows that rose at least 5x, now at least 20 requests or 1.0 MiB a direction: 1\n" in text.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--baseline-window", "7d"], "--baseline-window needs --since"),
        (["--by", "bytes", "--graph", "f.svg"], "--by bytes needs the bytes: pass --access-log"),
        (["--factor", "1"], "is not a factor above 1"),
        (["--min-bytes", "lots"], "is not a size such as 512, 10MB or 1GiB"),
        (
            ["--since", "1d", "--baseline-window", "7d", "--compare-to", "x.jsonl"],
            "not allowed with argument",
        ),
        (["--access-log", "nowhere-*.log"], "nowhere-*.log: no such access log"),
        (["--compare-to", "nowhere.jsonl"], "nowhere.jsonl: no such decision log"),
    ],
)
def test_what_does_not_fit_exits_2_with_the_reason(
    logs: tuple[Path, Path], arguments: list[str], message: str
) -> None:
    result = run_authz("inventory", str(logs[0]), *arguments)
    assert (result.returncode, result.stdout) == (2, "")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
