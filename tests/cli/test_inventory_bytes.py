"""``authz inventory --access-log`` as a user runs it: the bytes in every
output, the flow map by bytes, and exit 2 with a clear message for what does
not fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.analysis.test_access_log import ACCESS
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


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--by", "bytes", "--graph", "f.svg"], "--by bytes needs the bytes: pass --access-log"),
        (["--access-log", "nowhere-*.log"], "nowhere-*.log: no such access log"),
    ],
)
def test_what_does_not_fit_exits_2_with_the_reason(
    logs: tuple[Path, Path], arguments: list[str], message: str
) -> None:
    result = run_authz("inventory", str(logs[0]), *arguments)
    assert (result.returncode, result.stdout) == (2, "")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
