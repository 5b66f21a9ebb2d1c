"""The scorecard documents: Markdown with every metric, JSON, and one
self-contained HTML file that a real headless Chromium renders (its DOM has
every metric heading, its screenshot the plot's bars)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from authz.analysis.logs import DecisionLogs
from authz.analysis.metrics import Scorecard
from authz.analysis.report import REASON_COLOURS, to_html, to_json, to_markdown
from authz.analysis.scorecard import compute
from authz.policy import load_paths
from tests.analysis.scorecard_data import NOW, TITLES, write_log, write_policies

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Scorecard:
    tmp_path = tmp_path_factory.mktemp("scorecard")
    policies = write_policies(tmp_path / "policies")
    with DecisionLogs([str(write_log(tmp_path / "d.jsonl"))]) as logs:
        return compute(logs, load_paths([policies]), [str(policies)], now=datetime.fromisoformat(NOW))


def test_markdown_has_every_metric_with_its_definition(card: Scorecard) -> None:
    text = to_markdown(card)
    assert re.findall(r"^## (.+)$", text, re.MULTILINE) == TITLES
    for name in card.METRICS:
        assert f"> {getattr(card, name).DEFINITION}" in text
    assert "**88.2%: 15 of 17 checks**" in text
    assert "**not computed: pass --git**" in text
    assert (
        "| spiffe://prod.example.org/ns/analytics/* | INC-9 | 2026-11-22 16:40:00Z | - | never observed | 0 |"
        in text
    )
    assert "| partner-sync | 2 | 4 | 50.0% | NO_MATCHING_RULE 2 |" in text
    assert "| 2026-11-20 | 3 | 0 | 0 | 0 | 0 | 0 |" in text  # the denies per day, REVOKED first


def test_json_carries_each_metric_its_definition_and_the_parts_of_each_rate(card: Scorecard) -> None:
    found = json.loads(json.dumps(to_json(card)))
    assert [key for key in found if key in card.METRICS] == list(card.METRICS)
    assert found["identity_coverage"]["rate"] == {"numerator": 15, "denominator": 17, "value": 15 / 17}
    assert found["identity_coverage"]["title"] == "Identity coverage"
    revocations = {entry["identity"]: entry["elapsed"] for entry in found["revocation_time"]["revocations"]}
    assert revocations["spiffe://prod.example.org/ns/reporting/sa/exporter"] == 60.0
    assert revocations["spiffe://prod.example.org/ns/analytics/*"] is None
    assert found["start"] == "2026-11-10T00:00:00Z"


def test_html_is_one_file_that_fetches_nothing(card: Scorecard) -> None:
    page = to_html(card)
    assert page.count("<svg") == 1  # the plot, inline
    assert re.search(r"""(?:src|href)\s*=\s*["']?(?:[a-z]+:)?//""", page, re.IGNORECASE) is None
    for fetching in ("<script", "<link", "<img", "<iframe", "@import"):
        assert fetching not in page.lower()
    assert re.search(r"url\((?!#)", page) is None  # only the SVG's own clip paths
    assert "<metadata>" not in page


class _Headings(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag == "h2":
            self._in = ""

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self._in += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2" and self._in is not None:
            self.headings.append(self._in)
            self._in = None


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium, no network at all (every host name fails to resolve), bounded in time."""
    assert CHROMIUM is not None
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--force-color-profile=srgb", "--hide-scrollbars",
             f"--user-data-dir={profile}"]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's package chromium (make debs installs it)")
def test_html_renders_in_headless_chromium(card: Scorecard, tmp_path: Path) -> None:
    page = tmp_path / "scorecard.html"
    page.write_text(to_html(card), encoding="utf-8")
    dumped = chromium(tmp_path / "profile", "--dump-dom", page.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    parser = _Headings()
    parser.feed(dumped.stdout)
    assert parser.headings == TITLES
    assert "Denies by reason, per day (UTC)" in dumped.stdout  # the plot's title, as text in its SVG

    shot = tmp_path / "scorecard.png"
    done = chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,3400", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 3400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24)
    assert colours is not None
    revoked = [round(channel * 255) for channel in to_rgb(REASON_COLOURS["REVOKED"])]
    # REVOKED's bars (4 denies' worth) are drawn: thousands of pixels of its colour, give or take rounding
    drawn = sum(n for n, rgb in colours if all(abs(a - b) <= 3 for a, b in zip(rgb, revoked, strict=True)))
    assert drawn > 2000
