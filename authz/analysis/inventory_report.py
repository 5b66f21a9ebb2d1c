"""The inventory as text for a terminal and as Markdown for a pull request
or a wiki page (``--json`` is ``Inventory.to_dict``)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from datetime import datetime

from authz.analysis.access_log import AccessLogSummary
from authz.analysis.compare import PROTOCOLS, Comparison, FlowChange, Metric, Period
from authz.analysis.inventory import Destination, IdentityFlows, Inventory
from authz.analysis.review import PolicyReview
from authz.analysis.units import byte_size, duration_text

__all__ = ["NO_IDENTITY", "counted", "render_markdown", "render_text"]

#: How records without an identity are shown (``null`` in JSON).
NO_IDENTITY = "(no identity)"
_UNKNOWN_MEANS = {
    "log": "never allowed by a rule or exception in these logs",
    "policy": "not named by a rule or open exception of the identity's policy (host and port)",
}
_TEXT_COLUMNS = ("DESTINATION", "RECORDS", "ALLOW", "DENY", "W-DENY", "FIRST SEEN", "LAST SEEN", "REASONS")
_BYTE_COLUMNS = ("BYTES OUT", "BYTES IN")  # after W-DENY, with --access-log
_LEFT = ("IDENTITY", "DESTINATION", "FIRST SEEN", "LAST SEEN", "NEW", "BEFORE", "OVER")
_METRIC_NAMES: dict[Metric, str] = {"requests": "requests", "bytes_out": "bytes out", "bytes_in": "bytes in"}


def render_text(inventory: Inventory) -> str:
    """Aligned columns, one block an identity; unknown destinations marked ``!``."""
    return "\n".join(_text(inventory)) + "\n"


def render_markdown(inventory: Inventory) -> str:
    return "\n".join(_markdown(inventory)) + "\n"


def _text(inventory: Inventory) -> Iterator[str]:
    yield from _summary(inventory)
    yield f"  ! unknown destination: {_UNKNOWN_MEANS[inventory.unknown_by]}"
    for flows in inventory.identities:
        yield ""
        policies = f"  (policy {', '.join(flows.policies)})" if flows.policies else ""
        yield f"{_name(flows)}{policies}"
        yield f"  {_totals(flows)}, {_when(flows.first_seen)} .. {_when(flows.last_seen)}"
        headers = _headers(inventory)
        rows = [
            headers,
            *(_row(destination, inventory.access is not None) for destination in flows.destinations),
        ]
        for index, line in enumerate(_aligned(rows)):
            mark = "!" if index and flows.destinations[index - 1].unknown else " "
            yield f"  {mark} {line}".rstrip()
            if index:
                detail = _http(flows.destinations[index - 1])
                if detail:
                    yield f"      {detail}"
    if inventory.comparison is not None:
        yield ""
        yield from _comparison_text(inventory.comparison)
    if inventory.review is not None:
        yield ""
        yield from _review_text(inventory.review)


def _headers(inventory: Inventory) -> tuple[str, ...]:
    if inventory.access is None:
        return _TEXT_COLUMNS
    return (*_TEXT_COLUMNS[:5], *_BYTE_COLUMNS, *_TEXT_COLUMNS[5:])


def _aligned(rows: list[tuple[str, ...]]) -> Iterator[str]:
    """Columns padded to their widest cell (left or right as ``_LEFT`` says of the
    header, the first row); the last one free."""
    headers = rows[0]
    widths = [max(len(row[column]) for row in rows) for column in range(len(headers) - 1)]
    for row in rows:
        cells = [
            cell.ljust(width) if headers[column] in _LEFT else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        yield f"{'  '.join(cells)}  {row[-1]}"


def counted(count: int, noun: str) -> str:
    """``1 record``, ``2,000 records``."""
    return f"{count:,} {noun}{'s' * (count != 1)}"


def _summary(inventory: Inventory) -> Iterator[str]:
    malformed = f" ({counted(inventory.malformed, 'malformed line')} skipped)" if inventory.malformed else ""
    files = counted(len(inventory.files), "file")
    yield f"Inventory of {counted(inventory.records, 'decision')} from {files}{malformed}"
    yield f"  files: {_safe(', '.join(inventory.files))}"
    asked = ""
    if inventory.since is not None or inventory.until is not None:
        asked = f" (asked: {_when(inventory.since) or '...'} to {_when(inventory.until) or '...'})"
    if inventory.first is not None:
        yield f"  records from {_when(inventory.first)} to {_when(inventory.last)}{asked}"
    if inventory.access is not None:
        yield from _access_summary(inventory.access)


def _access_summary(access: AccessLogSummary) -> Iterator[str]:
    """What the access log held and how it met the decisions: nothing dropped unsaid."""
    malformed = f" ({counted(access.malformed, 'malformed line')} skipped)" if access.malformed else ""
    yield f"  access log: {counted(access.lines, 'line')} from {counted(len(access.files), 'file')}{malformed}"
    yield f"    files: {_safe(', '.join(access.files))}"
    logged = f"{access.logged:,} of the {counted(access.decisions, 'decision')} in the window have a line"
    repeated = f" ({access.repeated:,} more than one: their bytes are summed)" if access.repeated else ""
    yield f"    {access.matched:,} joined to a decision; {logged}{repeated}"
    yield (
        f"    {access.unmatched:,} with a decision id not in these decision logs"
        f" ({_bytes(access.unmatched_bytes_out, access.unmatched_bytes_in)})"
    )
    yield (
        f"    {access.no_decision_id:,} with no decision id, no check made: TLS refused, RBAC floor,"
        f" authz unreachable ({_bytes(access.no_decision_id_bytes_out, access.no_decision_id_bytes_in)})"
    )


def _bytes(out: int | None, into: int | None) -> str:
    return f"{byte_size(out or 0)} out, {byte_size(into or 0)} in"


def _name(flows: IdentityFlows) -> str:
    return _safe(flows.identity) if flows.identity is not None else NO_IDENTITY


def _totals(flows: IdentityFlows) -> str:
    parts = [f"{counted(flows.records, 'record')}: {flows.allow:,} allowed", f"{flows.deny:,} denied"]
    if flows.would_deny:
        parts.append(f"{flows.would_deny:,} would be denied (dry-run)")
    if flows.bytes_out is not None:
        parts.append(_bytes(flows.bytes_out, flows.bytes_in))
    return ", ".join(parts)


def _row(destination: Destination, with_bytes: bool = False) -> tuple[str, ...]:
    sizes: tuple[str, ...] = ()
    if with_bytes:  # no access-log line for any of its records: unknown, not 0
        counts = (destination.bytes_out, destination.bytes_in)
        sizes = tuple(byte_size(count or 0) if destination.logged else "-" for count in counts)
    return (
        _safe(destination.destination),
        f"{destination.records:,}",
        f"{destination.allow:,}",
        f"{destination.deny:,}",
        f"{destination.would_deny:,}",
        *sizes,
        _when(destination.first_seen),
        _when(destination.last_seen),
        _counts(destination.reasons),
    )


def _http(destination: Destination) -> str:
    """Methods and path prefixes, busiest first (TOP of each, then how many more)."""
    parts = []
    if destination.methods:
        parts.append(_counts(destination.methods, destination.other_methods))
    if destination.paths:
        parts.append("paths " + _counts(destination.paths, destination.other_paths))
    return "; ".join(parts)


def _counts(counts: Mapping[str, int], other: int = 0) -> str:
    text = ", ".join(f"{_safe(name)} {count:,}" for name, count in counts.items())
    return text + (f", others {other:,}" if other else "")


def _when(moment: datetime | None) -> str:
    """Seconds, UTC, readable: ``2026-11-02 10:00:00``."""
    if moment is None:
        return ""
    return moment.strftime("%Y-%m-%d %H:%M:%S") + ("" if moment.tzinfo is None else "Z")


def _review_text(review: PolicyReview) -> Iterator[str]:
    yield f"Against the policy (version {review.version}):"
    unused = review.unused_rules
    yield f"  rules and exceptions these logs never used ({len(unused)} of {len(review.rules)}):"
    for rule in unused:
        yield f"    {rule.policy}/{rule.id} ({rule.kind}, {', '.join(rule.hosts)})  {rule.file}:{rule.line}"
    yield f"  identities in the policy never seen ({len(review.unseen_identities)}):"
    for policy, pattern in review.unseen_identities:
        yield f"    {pattern}  (policy {policy})"
    yield f"  identities seen with no policy ({len(review.identities_without_policy)}):"
    for identity in review.identities_without_policy:
        yield f"    {identity}"


def _markdown(inventory: Inventory) -> Iterator[str]:
    yield "# Egress inventory"
    yield ""
    for line in _summary(inventory):
        yield _md(line.strip()) + "  "
    yield f"Unknown destinations (**bold**, ⚠): {_UNKNOWN_MEANS[inventory.unknown_by]}."
    for flows in inventory.identities:
        yield ""
        policies = f" (policy {', '.join(flows.policies)})" if flows.policies else ""
        yield f"## `{_md(_name(flows))}`{policies}"
        yield ""
        yield f"{_totals(flows)}; first seen {_when(flows.first_seen)}, last seen {_when(flows.last_seen)}."
        yield ""
        headers = [header.lower().replace("w-deny", "would-deny") for header in _headers(inventory)]
        yield "| " + " | ".join([*headers, "HTTP"]) + " |"
        yield (
            "| "
            + " | ".join("---" if h in _LEFT or h == "REASONS" else "---:" for h in _headers(inventory))
            + " | --- |"
        )
        for destination in flows.destinations:
            name = f"`{_md(destination.destination)}`"
            if destination.unknown:
                name = f"**{name}** ⚠"
            row = _row(destination, inventory.access is not None)
            cells = [name, *(_md(cell) for cell in row[1:]), _md(_http(destination))]
            yield "| " + " | ".join(cells) + " |"
    if inventory.comparison is not None:
        lines = list(_comparison_text(inventory.comparison))
        yield ""
        yield f"## {_md(lines[0])}"
        yield ""
        yield "```"
        yield from (line.removeprefix("  ") for line in lines[1:])
        yield "```"
    if inventory.review is not None:
        review = inventory.review
        yield ""
        yield f"## Against the policy (version `{review.version}`)"
        unused = [
            f"`{rule.policy}/{rule.id}` ({rule.kind}, {', '.join(f'`{_md(host)}`' for host in rule.hosts)})"
            f" at `{_md(rule.file)}:{rule.line}`"
            for rule in review.unused_rules
        ]
        yield from _bullets("Rules and exceptions these logs never used:", unused)
        unseen = [f"`{pattern}` (policy {policy})" for policy, pattern in review.unseen_identities]
        yield from _bullets("Identities in the policy never seen:", unseen)
        yield from _bullets(
            "Identities seen with no policy:", [f"`{_md(i)}`" for i in review.identities_without_policy]
        )


def _comparison_text(comparison: Comparison) -> Iterator[str]:
    """The flows that rose, the pairs over a new protocol, the pairs not in the baseline."""
    baseline, current, limits = comparison.baseline, comparison.current, comparison.thresholds
    where = "these logs" if baseline.files is None else _safe(", ".join(baseline.files))
    yield f"Compared with the baseline: {_period(baseline)} in {where}"
    scale = f"the baseline scaled by {comparison.scale:,.3g}" if comparison.scale else "not scaled"
    yield f"  this period: {_period(current)}; {scale}"
    floor = f"{limits.min_requests:,} requests"
    if comparison.with_bytes:
        floor += f" or {byte_size(limits.min_bytes)} a direction"
    if comparison.scale is None:
        yield "  flows that rose: not compared (a period that spans no time cannot be scaled)"
    else:
        yield f"  flows that rose at least {limits.factor:g}x, now at least {floor}: {len(comparison.rises):,}"
        headers = (
            "IDENTITY",
            "DESTINATION",
            "REQUESTS",
            *(("BYTES OUT", "BYTES IN") if comparison.with_bytes else ()),
        )
        rows = [(*headers, "ROSE"), *(_rise(change, comparison.with_bytes) for change in comparison.rises)]
        if comparison.rises:
            yield "    figures: now (the baseline scaled to this period)"
            yield from (f"    {line}".rstrip() for line in _aligned(rows))
    yield f"  pairs over a protocol they never used in the baseline: {len(comparison.protocol_changes):,}"
    rows = [("IDENTITY", "DESTINATION", "NEW", "BEFORE")]
    for change in comparison.protocol_changes:
        before = ", ".join(p for p in PROTOCOLS if p in change.before.protocols) or "-"
        rows.append((*_pair(change), ", ".join(change.new_protocols), before))
    if comparison.protocol_changes:
        yield from (f"    {line}".rstrip() for line in _aligned(rows))
    yield f"  pairs not in the baseline: {len(comparison.new_pairs):,}"
    rows = [
        ("IDENTITY", "DESTINATION", "REQUESTS", *(_BYTE_COLUMNS if comparison.with_bytes else ()), "OVER")
    ]
    for change in comparison.new_pairs[:TOP_NEW]:
        now = change.now
        sizes = (byte_size(now.bytes_out or 0), byte_size(now.bytes_in or 0)) if comparison.with_bytes else ()
        over = ", ".join(p for p in PROTOCOLS if p in now.protocols)
        rows.append((*_pair(change), f"{now.requests:,}", *sizes, over))
    if comparison.new_pairs:
        yield from (f"    {line}".rstrip() for line in _aligned(rows))
    if len(comparison.new_pairs) > TOP_NEW:
        yield f"    ({len(comparison.new_pairs) - TOP_NEW:,} more: --json lists them all)"


#: New pairs listed in text and Markdown (the busiest first); --json has them all.
TOP_NEW = 10


def _period(period: Period) -> str:
    return (
        f"{_when(period.start)} to {_when(period.end)} ({duration_text(period.length)},"
        f" {counted(period.records, 'decision')})"
        if period.start is not None
        else "no decisions"
    )


def _pair(change: FlowChange) -> tuple[str, str]:
    return (_safe(change.identity) if change.identity is not None else NO_IDENTITY, _safe(change.destination))


def _rise(change: FlowChange, with_bytes: bool) -> tuple[str, ...]:
    def cell(metric: Metric) -> str:
        value, expected = change.now.get(metric) or 0, change.expected.get(metric, 0.0)
        if metric == "requests":
            return f"{value:,} ({expected:,.1f})"
        return f"{byte_size(value)} ({byte_size(round(expected))})"

    metrics: tuple[Metric, ...] = ("requests", "bytes_out", "bytes_in") if with_bytes else ("requests",)
    rose = ", ".join(
        f"{_METRIC_NAMES[metric]} {'new' if math.isinf(change.ratio(metric)) else f'x{change.ratio(metric):,.1f}'}"
        for metric in change.rose
    )
    return (*_pair(change), *(cell(metric) for metric in metrics), rose)


def _bullets(title: str, items: list[str]) -> Iterator[str]:
    yield ""
    yield title
    yield ""
    yield from (f"- {item}" for item in items) if items else ["- none"]


def _md(text: str) -> str:
    """Text from the logs, safe in a Markdown table cell (hosts, paths and
    IDs come from callers: a ``|`` or a backtick must not break the table)."""
    return _safe(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "'")


def _safe(text: str) -> str:
    """Control characters (a terminal escape in a logged path) shown as ``?``."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)
