"""Clients for the gateway's three listeners, as workloads use them: an
HTTP request over mTLS, a TLS connection by SNI, and CONNECT through the
explicit proxy with the client's own TLS inside the tunnel. Everything
connects to the gateway's address (127.0.0.1 in the lab); the destination
is named in Host, SNI or CONNECT.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from authz.gateway.pki import IssuedCertificate

__all__ = ["GatewayClients", "Outcome"]

_TIMEOUT = 10.0
T = TypeVar("T")


@dataclass
class Outcome:
    """What a client saw: an HTTP status, or None when the gateway closed or
    refused the connection (``error`` says how). ``sent`` and ``received``
    count the bytes the client wrote and read after TLS: the request and the
    response (HTTP, SNI), or what went through the tunnel (CONNECT: its own
    TLS records, without the CONNECT exchange)."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    error: str = ""
    sent: int = 0
    received: int = 0

    @property
    def reason(self) -> str | None:
        return self.headers.get("x-egress-reason")

    @property
    def decision_id(self) -> str | None:
        return self.headers.get("x-egress-decision-id")


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


def _body(method: str, body: bytes | None) -> bytes:
    if body is not None:
        return body
    return b"{}" if method in ("POST", "PUT") else b""


class _TlsInTunnel:
    """TLS spoken through an already-open (TLS) socket: the client's own
    end-to-end TLS inside a CONNECT tunnel."""

    def __init__(self, sock: ssl.SSLSocket, context: ssl.SSLContext, server_hostname: str) -> None:
        self.sock = sock
        self.sent = self.received = 0  # bytes through the tunnel, TLS records and all
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        self._retry(self.tls.do_handshake)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)
            self.sent += len(data)

    def _retry(self, operation: Callable[[], T]) -> T:
        while True:
            try:
                result = operation()
                self._flush()
                return result
            except ssl.SSLWantReadError:
                self._flush()
                chunk = self.sock.recv(65536)
                self.received += len(chunk)
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


class GatewayClients:
    """The listeners' clients; a subclass provides ``ports``, ``ca_bundle``
    and ``client_context`` (the lab, or a gateway started elsewhere)."""

    gateway_host: str = "127.0.0.1"

    def access_log_records(self) -> list[dict[str, Any]]:
        """The gateway's access log so far, where it can be read (none by default)."""
        return []

    ports: Mapping[str, int]
    ca_bundle: Path

    def svid(self, identity: str) -> IssuedCertificate:
        """The identity's X.509 SVID."""
        raise NotImplementedError

    def client_context(
        self,
        identity: str | None = None,
        *,
        certificate: IssuedCertificate | None = None,
        check_hostname: bool = True,
    ) -> ssl.SSLContext:
        """Trusts the gateway's CA; presents the identity's SVID (or ``certificate``; or none)."""
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        context.check_hostname = check_hostname
        chosen = certificate or (self.svid(identity) if identity is not None else None)
        if chosen is not None:
            context.load_cert_chain(chosen.certificate, chosen.key)
        return context

    def _open(self, port: int, context: ssl.SSLContext, server_hostname: str | None) -> ssl.SSLSocket:
        sock = socket.create_connection((self.gateway_host, port), timeout=_TIMEOUT)
        try:
            return context.wrap_socket(sock, server_hostname=server_hostname or self.gateway_host)
        except BaseException:
            sock.close()
            raise

    def _exchange(
        self, port: int, context: ssl.SSLContext, server_hostname: str | None, request: bytes
    ) -> Outcome:
        try:
            with self._open(port, context, server_hostname) as tls:
                tls.sendall(request)
                raw = _read_all(iter(lambda: tls.recv(65536), b""))
                return replace(_parse(raw), sent=len(request), received=len(raw))
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
        body: bytes | None = None,
    ) -> Outcome:
        """A request to the HTTP listener, reaching the gateway by its address
        (or with ``sni``, as a transparent client would) and naming ``host``;
        ``body`` is sent as is (default ``{}`` for POST and PUT)."""
        context = context or self.client_context(identity, check_hostname=sni is None)
        request = _request(method, host, path, _body(method, body), headers)
        return self._exchange(self.ports["http"], context, sni, request)

    def tls(
        self,
        identity: str | None,
        server_name: str,
        path: str = "/",
        *,
        context: ssl.SSLContext | None = None,
        method: str = "GET",
        body: bytes | None = None,
    ) -> Outcome:
        """A connection to the SNI listener naming ``server_name``, and an HTTP request inside it."""
        context = context or self.client_context(identity, check_hostname=False)
        request = _request(method, server_name, path, _body(method, body))
        return self._exchange(self.ports["sni"], context, server_name, request)

    def connect(
        self,
        identity: str | None,
        authority: str,
        path: str = "/",
        method: str = "GET",
        body: bytes | None = None,
    ) -> Outcome:
        """CONNECT through the explicit proxy; once tunnelled, the client's own
        TLS to the destination (or plain HTTP for port 80) and a request."""
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
                request = _request(method, host, path, _body(method, body))
                if port == "80":
                    proxy.sendall(request)
                    raw = _read_all(iter(lambda: proxy.recv(65536), b""))
                    return replace(_parse(raw), sent=len(request), received=len(raw))
                inner = _TlsInTunnel(proxy, ssl.create_default_context(cafile=str(self.ca_bundle)), host)
                inner.send(request)
                answer = _parse(_read_all(inner.chunks()))
                return replace(answer, sent=inner.sent, received=inner.received)
        except (ssl.SSLError, OSError) as exc:
            return Outcome(None, error=f"{type(exc).__name__}: {exc}")

    # -- observation ------------------------------------------------------
