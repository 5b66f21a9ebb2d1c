"""The flow map drawn by the real Graphviz: the nodes and edges it should
have (read back from the SVG), colours by outcome, the cut, PNG bytes."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from authz.analysis.flowmap import COLOURS, GraphError, write_flow_map
from authz.analysis.inventory import Inventory, take_inventory
from authz.analysis.logs import DecisionLogs
from tests.analysis.test_inventory import TRAFFIC
from tests.analysis.traffic import records, write_log

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz's dot is missing: install the Debian package graphviz"
)
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    log = write_log(tmp_path / "d.jsonl", records(TRAFFIC))
    with DecisionLogs([str(log)]) as logs:
        return take_inventory(logs)


Drawn = tuple[str, float, str | None]  # an edge's stroke, width and dash pattern


def drawing(path: Path) -> tuple[dict[str, str], dict[tuple[str, str], Drawn], str]:
    """The SVG read back: node labels by node id, (stroke, width, dashes) by
    edge (as labels), and the caption."""
    root = ET.parse(path).getroot()
    nodes: dict[str, str] = {}
    edges: dict[tuple[str, str], Drawn] = {}
    caption = ""
    for group in root.iter(f"{SVG}g"):
        title = "".join(group.findtext(f"{SVG}title") or "")
        text = " ".join("".join(t.itertext()) for t in group.iter(f"{SVG}text"))
        if group.get("class") == "node":
            nodes[title] = text
        elif group.get("class") == "edge":
            source, target = title.split("->")
            (line,) = group.iter(f"{SVG}path")
            drawn = (
                line.get("stroke", ""),
                float(line.get("stroke-width", "1")),
                line.get("stroke-dasharray"),
            )
            edges[source, target] = drawn
        elif group.get("class") == "graph":
            caption = " ".join("".join(t.itertext()) for t in group.findall(f"{SVG}text"))
    named = {(nodes[source], nodes[target]): drawn for (source, target), drawn in edges.items()}
    return nodes, named, caption


@needs_dot
def test_identities_point_to_destinations_coloured_by_outcome(tmp_path: Path, inventory: Inventory) -> None:
    drawn = write_flow_map(inventory, tmp_path / "flows.svg")
    assert (drawn.edges, drawn.total, drawn.records_left_out) == (11, 11, 0)
    nodes, edges, caption = drawing(tmp_path / "flows.svg")
    assert len(nodes) == 6 + 10
    assert len(edges) == 11
    ci, payments = "prod.example.org/ns/ci/sa/ci-runner", "prod.example.org/ns/payments/sa/payments-api"
    partner = "prod.example.org/ns/partners/sa/partner-sync"
    npm = edges[ci, "registry.npmjs.org:443"]
    pastebin = edges[ci, "\u26a0 pastebin.com:443"]  # unknown: never allowed in the log
    assert (npm[0], pastebin[0]) == (COLOURS["allow"], COLOURS["deny"])
    assert npm[1] > pastebin[1] > edges[ci, "github.com:443"][1]  # 3, 2 and 1 records
    assert edges[payments, "bank-gateway.example.com:443"][0] == COLOURS["mixed"]
    assert edges[partner, "\u26a0 www.pastebin.com:443"][0] == COLOURS["would-deny"]
    # One node for github.com:443: known to ci-runner, unknown (dashed) to the caller without an identity.
    assert edges["(no identity)", "github.com:443"][0] == COLOURS["deny"]
    assert edges["(no identity)", "github.com:443"][2] is not None
    assert edges[ci, "github.com:443"][2] is None
    assert pastebin[2] is not None
    assert "15 decisions" in caption
    assert "left out" not in caption


@needs_dot
def test_only_the_busiest_pairs_are_drawn_and_the_map_says_so(tmp_path: Path, inventory: Inventory) -> None:
    drawn = write_flow_map(inventory, tmp_path / "flows.svg", max_edges=2)
    assert (drawn.edges, drawn.total, drawn.records_left_out) == (2, 11, 10)
    nodes, edges, caption = drawing(tmp_path / "flows.svg")
    assert set(edges) == {
        ("prod.example.org/ns/ci/sa/ci-runner", "registry.npmjs.org:443"),
        ("prod.example.org/ns/ci/sa/ci-runner", "\u26a0 pastebin.com:443"),
    }
    assert len(nodes) == 3
    assert "showing the 2 busiest of 11 identity-destination pairs; 9 pairs (10 records) left out" in caption


@needs_dot
def test_png_and_pdf_are_pictures_and_other_suffixes_are_refused(
    tmp_path: Path, inventory: Inventory
) -> None:
    write_flow_map(inventory, tmp_path / "flows.png")
    assert (tmp_path / "flows.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_flow_map(inventory, tmp_path / "flows.PDF")
    assert (tmp_path / "flows.PDF").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(GraphError, match=r"drawn as \.svg, \.png, \.pdf"):
        write_flow_map(inventory, tmp_path / "flows.gif")
    assert not (tmp_path / "flows.gif").exists()


def test_without_dot_the_error_names_the_debian_package(
    tmp_path: Path, inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on it
    with pytest.raises(GraphError, match="install the Debian package graphviz"):
        write_flow_map(inventory, tmp_path / "flows.svg")
    assert not (tmp_path / "flows.svg").exists()
