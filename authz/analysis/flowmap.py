"""The flow map (``authz inventory --graph flows.svg``): identities on the
left, destinations on the right, one edge a pair that met, coloured by what
happened to it and as wide as the log of its volume: its records, or with
``--by bytes`` the bytes it moved (out and in, from the access log). Drawn by
Graphviz (Debian's ``dot``, through the ``graphviz`` binding); the busiest
edges only, and the picture says how many were left out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import graphviz

from authz.analysis.inventory import Destination, IdentityFlows, Inventory, Outcome
from authz.analysis.units import byte_size

__all__ = [
    "COLOURS",
    "FORMATS",
    "MAX_EDGES",
    "By",
    "FlowMap",
    "GraphError",
    "busiest",
    "flow_graph",
    "write_flow_map",
]

#: Edge colour by outcome: all its records allowed, denied, allowed by dry-run
#: but denied once enforced (would-deny), or more than one of these (mixed).
COLOURS: dict[Outcome, str] = {
    "allow": "#2e7d32",
    "deny": "#c62828",
    "would-deny": "#ef6c00",
    "mixed": "#6a1b9a",
}
FORMATS = ("svg", "png", "pdf")
MAX_EDGES = 80
_LABEL_LIMIT = 64  # characters of a node label; the full name is its tooltip
_NO_IDENTITY = "(no identity)"
By = Literal["records", "bytes"]


class GraphError(Exception):
    """The map cannot be drawn: an unknown format, or no ``dot`` to draw it."""


@dataclass(frozen=True, slots=True)
class FlowMap:
    """What was drawn: ``edges`` of ``total`` pairs (the busiest), and the
    records and the bytes (out and in) of the pairs left out."""

    path: Path
    edges: int
    total: int
    records_left_out: int
    bytes_left_out: int = 0


Pair = tuple[IdentityFlows, Destination]


def moved(destination: Destination) -> int:
    """The bytes a pair moved, out and in (0 without an access log)."""
    return (destination.bytes_out or 0) + (destination.bytes_in or 0)


def busiest(
    inventory: Inventory, max_edges: int = MAX_EDGES, by: By = "records"
) -> tuple[list[Pair], list[Pair]]:
    """The (identity, destination) pairs to draw, busiest first (by records or bytes), and those left out."""
    measure = moved if by == "bytes" else (lambda destination: destination.records)
    pairs = sorted(
        ((flows, destination) for flows in inventory.identities for destination in flows.destinations),
        key=lambda pair: (-measure(pair[1]), -pair[1].records, pair[0].identity or "", pair[1].destination),
    )
    return pairs[:max_edges], pairs[max_edges:]


def flow_graph(inventory: Inventory, max_edges: int = MAX_EDGES, by: By = "records") -> graphviz.Digraph:
    """The Graphviz graph of the ``max_edges`` busiest (identity, destination) pairs."""
    shown, cut = busiest(inventory, max_edges, by)
    graph = graphviz.Digraph("flows", graph_attr={"rankdir": "LR", "ranksep": "1.6", "nodesep": "0.25"})
    graph.attr("node", fontname="Helvetica", fontsize="11")
    graph.attr("edge", fontname="Helvetica", fontsize="9", arrowsize="0.6")
    left_out = sum(d.records for _, d in cut), sum(moved(d) for _, d in cut)
    graph.attr(label=_caption(inventory, len(shown), len(shown) + len(cut), left_out, by))
    graph.attr(labelloc="t", labeljust="l", fontname="Helvetica", fontsize="12")
    # Unknown is said of a pair: a destination is marked when it is unknown to every identity drawn to it.
    known = {destination.destination for _, destination in shown if not destination.unknown}
    identities: dict[str | None, str] = {}
    destinations: dict[str, str] = {}
    for flows, destination in shown:
        source = identities.get(flows.identity)
        if source is None:
            source = identities[flows.identity] = f"i{len(identities)}"
            _identity_node(graph, source, flows)
        target = destinations.get(destination.destination)
        if target is None:
            target = destinations[destination.destination] = f"d{len(destinations)}"
            _destination_node(graph, target, destination.destination, destination.destination not in known)
        colour = COLOURS[destination.outcome]
        if by == "bytes":  # 1 KiB 1.4 pt, 1 MiB 4.6, 1 GiB 8.2
            label = (
                f"\u2191{byte_size(destination.bytes_out or 0)} \u2193{byte_size(destination.bytes_in or 0)}"
            )
            width = 1 + 1.2 * math.log10(1 + moved(destination) / 1024)
        else:
            label, width = f"{destination.records:,}", 1 + 1.5 * math.log10(destination.records)
        graph.edge(
            source,
            target,
            label=label,
            color=colour,
            fontcolor=colour,
            penwidth=f"{width:.2f}",
            style="dashed" if destination.unknown else "solid",
            tooltip=graphviz.escape(f"{destination.outcome}: {_reasons(destination)}"),
        )
    return graph


def write_flow_map(
    inventory: Inventory, path: Path, max_edges: int = MAX_EDGES, by: By = "records"
) -> FlowMap:
    """Draw the map into ``path``, its format named by the suffix (.svg, .png, .pdf)."""
    kind = path.suffix.lower().lstrip(".")
    if kind not in FORMATS:
        raise GraphError(f"{path}: the flow map is drawn as {', '.join('.' + f for f in FORMATS)}")
    if by == "bytes" and inventory.access is None:
        raise GraphError("--by bytes needs the access log: pass --access-log")
    try:
        picture = flow_graph(inventory, max_edges, by).pipe(format=kind, quiet=True)
    except graphviz.ExecutableNotFound:
        raise GraphError("Graphviz's dot is not installed: install the Debian package graphviz") from None
    except graphviz.CalledProcessError as exc:
        raise GraphError(f"dot failed: {exc}") from None
    path.write_bytes(picture)
    shown, cut = busiest(inventory, max_edges, by)
    return FlowMap(
        path,
        len(shown),
        len(shown) + len(cut),
        sum(destination.records for _, destination in cut),
        sum(moved(destination) for _, destination in cut),
    )


def _identity_node(graph: graphviz.Digraph, name: str, flows: IdentityFlows) -> None:
    full = flows.identity if flows.identity is not None else _NO_IDENTITY
    graph.node(
        name,
        label=graphviz.escape(_short(full.removeprefix("spiffe://"))),
        tooltip=graphviz.escape(full),
        shape="box",
        style="rounded,filled",
        fillcolor="#eceff1" if flows.identity is not None else "#ffebee",
    )


def _destination_node(graph: graphviz.Digraph, name: str, destination: str, unknown: bool) -> None:
    attributes = {"shape": "ellipse", "tooltip": graphviz.escape(destination)}
    label = _short(destination)
    if unknown:
        label = "\u26a0 " + label
        attributes |= {"color": COLOURS["deny"], "fontcolor": COLOURS["deny"], "penwidth": "2"}
    graph.node(name, label=graphviz.escape(label), **attributes)


def _caption(inventory: Inventory, shown: int, total: int, left_out: tuple[int, int], by: By) -> str:
    """An HTML-like label: what the map shows, the legend, and what was left out."""
    window = ""
    if inventory.first is not None and inventory.last is not None:
        window = f", {inventory.first:%Y-%m-%d %H:%M} to {inventory.last:%Y-%m-%d %H:%M} UTC"
    lines = [f"<b>Egress flows</b>: {inventory.records:,} decisions{window}"]
    legend = "  ".join(
        f'<font color="{colour}"><b>&#8212;</b> {outcome}</font>' for outcome, colour in COLOURS.items()
    )
    width = "log of the bytes, out (\u2191) and in (\u2193)" if by == "bytes" else "log of the records"
    lines.append(f"{legend}   width: {width}   dashed: unknown destination (red: to all)")
    if shown < total:
        cut = f"{left_out[0]:,} records" + (f", {byte_size(left_out[1])}" if by == "bytes" else "")
        lines.append(
            f"showing the {shown:,} busiest of {total:,} identity-destination pairs;"
            f" {total - shown:,} pairs ({cut}) left out"
        )
    return "<" + '<br align="left"/>'.join(lines) + '<br align="left"/>>'


def _short(text: str) -> str:
    return text if len(text) <= _LABEL_LIMIT else text[: _LABEL_LIMIT - 1] + "\u2026"


def _reasons(destination: Destination) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in destination.reasons.items())
