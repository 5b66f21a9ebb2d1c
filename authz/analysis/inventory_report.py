"""The inventory as text for a terminal and as Markdown for a pull request
or a wiki page (``--json`` is ``Inventory.to_dict``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime

from authz.analysis.inventory import Destination, IdentityFlows, Inventory
from authz.analysis.review import PolicyReview

__all__ = ["NO_IDENTITY", "counted", "render_markdown", "render_text"]

#: How records without an identity are shown (``null`` in JSON).
NO_IDENTITY = "(no identity)"
_UNKNOWN_MEANS = {
    "log": "never allowed by a rule or exception in these logs",
    "policy": "not named by a rule or open exception of the identity's policy (host and port)",
}
_TEXT_COLUMNS = ("DESTINATION", "RECORDS", "ALLOW", "DENY", "W-DENY", "FIRST SEEN", "LAST SEEN", "REASONS")


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
        rows = [_TEXT_COLUMNS, *(_row(destination) for destination in flows.destinations)]
        widths = [max(len(row[column]) for row in rows) for column in range(len(_TEXT_COLUMNS) - 1)]
        for index, row in enumerate(rows):
            mark = "!" if index and flows.destinations[index - 1].unknown else " "
            cells = [
                cell.ljust(width) if column in (0, 5, 6) else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=False))
            ]
            yield f"  {mark} {'  '.join(cells)}  {row[-1]}".rstrip()
            if index:
                detail = _http(flows.destinations[index - 1])
                if detail:
                    yield f"      {detail}"
    if inventory.review is not None:
        yield ""
        yield from _review_text(inventory.review)


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


def _name(flows: IdentityFlows) -> str:
    return _safe(flows.identity) if flows.identity is not None else NO_IDENTITY


def _totals(flows: IdentityFlows) -> str:
    parts = [f"{counted(flows.records, 'record')}: {flows.allow:,} allowed", f"{flows.deny:,} denied"]
    if flows.would_deny:
        parts.append(f"{flows.would_deny:,} would be denied (dry-run)")
    return ", ".join(parts)


def _row(destination: Destination) -> tuple[str, ...]:
    return (
        _safe(destination.destination),
        f"{destination.records:,}",
        f"{destination.allow:,}",
        f"{destination.deny:,}",
        f"{destination.would_deny:,}",
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
        yield "| destination | records | allow | deny | would-deny | first seen | last seen | reasons | HTTP |"
        yield "| --- | ---: | ---: | ---: | ---: | --- | --- | --- | --- |"
        for destination in flows.destinations:
            name = f"`{_md(destination.destination)}`"
            if destination.unknown:
                name = f"**{name}** ⚠"
            cells = [name, *(_md(cell) for cell in _row(destination)[1:]), _md(_http(destination))]
            yield "| " + " | ".join(cells) + " |"
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
