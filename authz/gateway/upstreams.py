"""Local stand-ins for the destinations: HTTP servers (plain or TLS) on
127.0.0.1 that answer every request with what they were asked, and remember
it; ``/bytes/N`` answers N bytes instead (a download of a known size)."""

from __future__ import annotations

import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["Upstream", "start_upstream", "tls_context"]


class _Echo(BaseHTTPRequestHandler):
    """The destination: answers every request with what it was asked."""

    server_version = "upstream"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        received = len(self.rfile.read(length))
        seen = {
            "upstream": getattr(self.server, "label", "?"),
            "host": self.headers.get("host"),
            "path": self.path,
            "received": str(received),
            **{
                name.lower(): value
                for name, value in self.headers.items()
                if name.lower().startswith("x-egress-")
            },
        }
        getattr(self.server, "seen", []).append(seen)
        download = re.fullmatch(r"/bytes/(\d{1,9})", self.path)
        body = b"x" * int(download[1]) if download else json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, label: str, address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        super().__init__(address, _Echo)
        self.label = label
        self.seen: list[dict[str, str]] = []


def tls_context(certificate: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    return context


def start_upstream(
    label: str, context: ssl.SSLContext | None, address: tuple[str, int] = ("127.0.0.1", 0)
) -> Upstream:
    """Serving on a thread of its own, until ``shutdown()``."""
    server = Upstream(label, address)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name=f"upstream-{label}", daemon=True).start()
    return server
