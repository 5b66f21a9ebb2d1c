"""The scorecard as Markdown, as one self-contained HTML file (inline CSS,
the plot as inline SVG: it opens from a mail attachment or an archive with
no network), or as JSON. Both documents are rendered from the same
sections, so they cannot disagree."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from authz.analysis.metrics import DeniesOverTime, Rate, Scorecard
from authz.analysis.units import byte_size, duration_text
from authz.core.decision import Reason

__all__ = ["REASON_COLOURS", "Section", "sections", "to_html", "to_json", "to_markdown"]

_PALETTE = matplotlib.colormaps["tab20"]
_DERIVED = ("elapsed", "age", "total")  # properties the JSON carries as well
# Each reason its colour in every report: tab20's strong tones first, then its light ones.
REASON_COLOURS = {
    reason.value: _PALETTE((2 * index) % 20 + (2 * index) // 20) for index, reason in enumerate(Reason)
}


@dataclass(frozen=True, slots=True)
class Table:
    headers: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Section:
    """One metric as both documents show it: its title, its definition, the
    headline figure, tables, notes; ``denies`` is drawn (HTML) or tabled (Markdown)."""

    title: str
    definition: str
    headline: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    denies: DeniesOverTime | None = None


def sections(card: Scorecard) -> list[Section]:
    return [
        _coverage(card),
        _unknown(card),
        _first_seen(card),
        _exceptions(card),
        _half_life(card),
        _revocations(card),
        _dry_run(card),
        _denies(card),
        _bytes_by_identity(card),
        _bytes_to_unapproved(card),
    ]


def _coverage(card: Scorecard) -> Section:
    metric = card.identity_coverage
    unverified = Table(("without a verified identity: reason", "checks"), _counts(metric.unverified))
    return Section(metric.TITLE, metric.DEFINITION, _rate(metric.rate, "checks"), [unverified])


def _unknown(card: Scorecard) -> Section:
    metric = card.unknown_destinations
    top = [(identity, destination, f"{n:,}") for identity, destination, n in metric.top]
    tables = [
        Table(("reason", "checks"), _counts(metric.by_reason)),
        Table(("identity", "destination", "checks"), top),
    ]
    return Section(
        metric.TITLE, metric.DEFINITION, _rate(metric.rate, "checks with a verified identity"), tables
    )


def _first_seen(card: Scorecard) -> Section:
    metric = card.first_seen
    rows = []
    for seen in metric.identities:
        newest = ", ".join(f"{destination} ({_time(when)})" for destination, when in seen.newest)
        rows.append((seen.identity, f"{seen.destinations:,}", f"{seen.recent:,}", newest))
    pairs = sum(seen.destinations for seen in metric.identities)
    recent = sum(seen.recent for seen in metric.identities)
    headline = (
        f"{pairs:,} identity-destination pairs, {recent:,} first seen since {_time(metric.recent_since)}"
    )
    headers = ("identity", "destinations", "new in the last 7 days", "newest (first seen)")
    return Section(metric.TITLE, metric.DEFINITION, headline, [Table(headers, rows)])


def _exceptions(card: Scorecard) -> Section:
    metric = card.exceptions
    rows = [
        (use.policy, use.id, use.owner, use.ticket, _time(use.expires), use.state, f"{use.uses:,}",
         _time(use.last_used), f"{use.after_expiry:,}")
        for use in metric.exceptions
    ]  # fmt: skip
    headers = ("policy", "exception", "owner", "ticket", "expires", "state", "uses", "last used",
               "denied after expiry")  # fmt: skip
    expired = len(metric.exceptions) - metric.open
    headline = f"{metric.open} open, {expired} expired but still in the files"
    return Section(metric.TITLE, metric.DEFINITION, headline, [Table(headers, rows)])


def _half_life(card: Scorecard) -> Section:
    metric = card.exception_half_life
    if not metric.computed:
        return Section(metric.TITLE, metric.DEFINITION, "not computed: pass --git")
    headline = (
        "no exception has been removed in the history"
        if metric.median is None
        else f"{duration_text(metric.median)} (median of {len(metric.removed)} removed)"
    )
    rows = [
        (
            gone.policy,
            gone.id,
            gone.ticket or "-",
            _time(gone.added),
            _time(gone.removed),
            duration_text(gone.age),
        )
        for gone in metric.removed
    ]
    headers = ("policy", "exception", "ticket", "added", "removed", "age at removal")
    notes = [f"Exceptions still in the newest revision: {metric.still_open}."]
    return Section(metric.TITLE, metric.DEFINITION, headline, [Table(headers, rows)], notes)


def _revocations(card: Scorecard) -> Section:
    metric = card.revocation_time
    rows = []
    for revocation in metric.revocations:
        elapsed = "never observed" if revocation.elapsed is None else duration_text(revocation.elapsed)
        if revocation.elapsed is not None and revocation.upper_bound:
            elapsed += " (at most: the logs begin after at)"
        rows.append(
            (revocation.identity, revocation.ticket or "-", _time(revocation.at),
             _time(revocation.first_revoked), elapsed, f"{revocation.revoked_checks:,}")
        )  # fmt: skip
    observed = sum(revocation.first_revoked is not None for revocation in metric.revocations)
    headline = f"{observed} of {len(metric.revocations)} revocations observed in the logs"
    headers = ("identity", "ticket", "at", "first REVOKED", "revocation time", "REVOKED checks")
    return Section(metric.TITLE, metric.DEFINITION, headline, [Table(headers, rows)])


def _dry_run(card: Scorecard) -> Section:
    metric = card.dry_run
    rows = []
    for policy in metric.policies:
        reasons = ", ".join(f"{why} {n:,}" for why, n in policy.reasons.items()) or "-"
        rate = policy.rate
        rows.append((policy.policy, f"{rate.numerator:,}", f"{rate.denominator:,}", _percent(rate), reasons))
    headers = ("policy", "would deny", "checks", "would-deny rate", "would-deny reasons")
    headline = f"{len(metric.policies)} {'policy' if len(metric.policies) == 1 else 'policies'} in dry-run"
    return Section(metric.TITLE, metric.DEFINITION, headline, [Table(headers, rows)])


def _denies(card: Scorecard) -> Section:
    metric = card.denies
    totals = Table(("reason", "denies"), _counts({reason: sum(n) for reason, n in metric.counts.items()}))
    headline = f"{metric.total:,} denies, per {metric.bucket}"
    return Section(metric.TITLE, metric.DEFINITION, headline, [totals], denies=metric)


def _bytes_by_identity(card: Scorecard) -> Section:
    metric = card.bytes_by_identity
    if not metric.computed:
        return Section(metric.TITLE, metric.DEFINITION, "not computed: pass --access-log")
    rows = [
        (seen.identity or "(no identity)", byte_size(seen.bytes_out), _share(seen.bytes_out, metric.total_out),
         byte_size(seen.bytes_in), f"{seen.checks:,}")
        for seen in metric.identities
    ]  # fmt: skip
    headline = f"{byte_size(metric.total_out)} out, {byte_size(metric.total_in)} in"
    headers = ("identity", "bytes out", "share of bytes out", "bytes in", "checks")
    return Section(metric.TITLE, metric.DEFINITION, headline, [Table(headers, rows)])


def _bytes_to_unapproved(card: Scorecard) -> Section:
    metric = card.bytes_to_unapproved
    if not metric.computed:
        return Section(metric.TITLE, metric.DEFINITION, "not computed: pass --access-log")
    rows = [
        (seen.destination, byte_size(seen.bytes_out), byte_size(seen.bytes_in), f"{seen.checks:,}",
         f"{seen.identities:,}")
        for seen in metric.destinations
    ]  # fmt: skip
    total = card.bytes_by_identity.total_out
    headline = f"{byte_size(metric.total_out)} out ({_share(metric.total_out, total)} of all bytes out)"
    headers = ("destination", "bytes out", "bytes in", "checks", "identities")
    return Section(metric.TITLE, metric.DEFINITION, headline, [Table(headers, rows)])


def _share(part: int, whole: int) -> str:
    return _percent(Rate(part, whole))


def _summary(card: Scorecard) -> list[tuple[str, str]]:
    access = card.access
    return [
        ("period", f"{_time(card.start)} to {_time(card.end)}" if card.start else "no records"),
        ("checks", f"{card.checks:,} ({card.malformed:,} malformed lines skipped)"),
        ("logs", ", ".join(card.files)),
        *(
            [
                (
                    "access log",
                    f"{', '.join(access.files)}: {access.lines:,} lines, {access.matched:,} joined to a check; "
                    f"{access.unmatched:,} of no check in the logs, {access.no_decision_id:,} with no decision id; "
                    f"{access.malformed:,} malformed lines skipped",
                )
            ]
            if access is not None
            else []
        ),
        ("policy", f"{', '.join(card.policy_paths)} (version {card.policy_version})"),
        ("generated", _time(card.generated)),
    ]


def to_markdown(card: Scorecard) -> str:
    lines = ["# Egress risk scorecard", ""]
    lines += _markdown_table(Table(("", ""), [(f"**{k}**", v) for k, v in _summary(card)]))
    for section in sections(card):
        lines += ["", f"## {section.title}", "", f"> {section.definition}", "", f"**{section.headline}**"]
        for table in [*section.tables, *([_bucket_table(section.denies)] if section.denies else [])]:
            if table.rows:
                lines += ["", *_markdown_table(table)]
        lines += [item for note in section.notes for item in ("", note)]
    return "\n".join(lines) + "\n"


def to_html(card: Scorecard) -> str:
    body = ["<h1>Egress risk scorecard</h1>", _html_table(Table(("", ""), _summary(card)), header=False)]
    for section in sections(card):
        body += [
            "<section>",
            f"<h2>{_e(section.title)}</h2>",
            f'<p class="definition">{_e(section.definition)}</p>',
            f'<p class="headline">{_e(section.headline)}</p>',
        ]
        if section.denies is not None and section.denies.total:
            body.append(f"<figure>{plot_denies(section.denies)}</figure>")
        body += [_html_table(table) for table in section.tables if table.rows]
        if section.denies is not None and section.denies.total:
            table = _html_table(_bucket_table(section.denies))
            body.append(f"<details><summary>per {section.denies.bucket}</summary>{table}</details>")
        body += [f"<p>{_e(note)}</p>" for note in section.notes]
        body.append("</section>")
    return _PAGE.format(body="\n".join(body))


def to_json(card: Scorecard) -> dict[str, Any]:
    """Plain data: times in RFC 3339, durations in seconds, rates with their parts."""
    found: dict[str, Any] = {
        "generated": card.generated, "files": list(card.files), "policy_paths": list(card.policy_paths),
        "policy_version": card.policy_version, "start": card.start, "end": card.end,
        "checks": card.checks, "malformed": card.malformed,
        "access_log": card.access.to_dict() if card.access is not None else None,
    }  # fmt: skip
    for name in card.METRICS:
        metric = getattr(card, name)
        found[name] = {"title": metric.TITLE, "definition": metric.DEFINITION, **_plain(metric)}
    plain: dict[str, Any] = _plain(found)
    return plain


def plot_denies(denies: DeniesOverTime) -> str:
    """A stacked bar a bucket, as inline SVG (text kept as text, no metadata, stable ids)."""
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    axes = figure.add_subplot()
    positions = range(len(denies.starts))
    bottom = [0] * len(denies.starts)
    for reason, counts in denies.counts.items():
        axes.bar(
            positions, counts, 0.8, bottom=bottom, label=reason, color=REASON_COLOURS.get(reason, "grey")
        )
        bottom = [low + count for low, count in zip(bottom, counts, strict=True)]
    every = -(-len(denies.starts) // 16)  # at most 16 labels
    short = "%m-%d" if denies.bucket == "day" else "%m-%d %H:00"
    axes.set_xticks(list(positions)[::every], [start.strftime(short) for start in denies.starts][::every])
    axes.tick_params(axis="x", labelrotation=45)
    axes.set_ylabel("denies")
    axes.set_title(f"Denies by reason, per {denies.bucket} (UTC)")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = axes.get_legend_handles_labels()  # top of the legend, top of the stack
    axes.legend(
        handles[::-1],
        labels[::-1],
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        fontsize="small",
        frameon=False,
    )
    axes.spines[["top", "right"]].set_visible(False)
    text = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "scorecard"}):
        figure.savefig(text, format="svg", metadata={"Date": None})
    svg = text.getvalue()
    svg = svg[svg.index("<svg") :]
    return re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.DOTALL)


def _bucket_table(denies: DeniesOverTime) -> Table:
    reasons = list(denies.counts)
    rows = [
        (_bucket(denies, start), *(f"{denies.counts[r][index]:,}" for r in reasons))
        for index, start in enumerate(denies.starts)
    ]
    return Table((denies.bucket, *reasons), rows if reasons else [])


def _bucket(denies: DeniesOverTime, start: datetime) -> str:
    return start.strftime("%Y-%m-%d" if denies.bucket == "day" else "%m-%d %H:00")


def _markdown_table(table: Table) -> list[str]:
    def row(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [row(table.headers), row(tuple("---" for _ in table.headers)), *map(row, table.rows)]


def _html_table(table: Table, *, header: bool = True) -> str:
    head = "<tr>" + "".join(f"<th>{_e(cell)}</th>" for cell in table.headers) + "</tr>" if header else ""
    rows = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in table.rows)
    return f"<table>{head}{rows}</table>"


def _counts(counts: dict[str, int]) -> list[tuple[str, ...]]:
    return [(key, f"{count:,}") for key, count in counts.items()]


def _rate(rate: Rate, of: str) -> str:
    return (
        f"{_percent(rate)}: {rate.numerator:,} of {rate.denominator:,} {of}"
        if rate.denominator
        else f"no {of}"
    )


def _percent(rate: Rate) -> str:
    return "-" if rate.value is None else f"{rate.value:.1%}"


def _time(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Rate):
        return {"numerator": value.numerator, "denominator": value.denominator, "value": value.value}
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        names = [*value.__dataclass_fields__, *(name for name in _DERIVED if hasattr(value, name))]
        return {name: _plain(getattr(value, name)) for name in names}
    return value


def _e(text: str) -> str:
    return html.escape(text, quote=True)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Egress risk scorecard</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; color: #1d2330; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; }}
h1 {{ font-size: 1.7rem; margin-bottom: .5rem; }}
section {{ border-top: 1px solid #d5d9e0; margin-top: 1.6rem; padding-top: .4rem; }}
h2 {{ font-size: 1.25rem; margin: .6rem 0 .2rem; }}
.definition {{ color: #4a5262; font-style: italic; margin: .2rem 0 .6rem; }}
.headline {{ font-size: 1.35rem; font-weight: 600; margin: .4rem 0 .8rem; }}
table {{ border-collapse: collapse; margin: .5rem 0 .8rem; font-size: .9rem; }}
th, td {{ border: 1px solid #d5d9e0; padding: .25rem .55rem; text-align: left; vertical-align: top; }}
th {{ background: #f1f3f7; }}
td {{ overflow-wrap: break-word; }}
figure {{ margin: .5rem 0; }}
figure svg {{ max-width: 100%; height: auto; }}
details summary {{ cursor: pointer; color: #4a5262; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
