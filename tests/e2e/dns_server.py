"""A DNS server for the lab: UDP on 127.0.0.1, a port of its own, answering
only the names in its table (A and AAAA, TTL 1 s) and NXDOMAIN for every
other name. It never forwards a query anywhere. The gateway asks it through
``authz envoy-config --dns-resolver``; a test changes an answer while it
runs (DNS rebinding) with :meth:`LabDns.answer`.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

__all__ = ["LabDns"]

TTL = 1


class _Table(BaseResolver):
    def __init__(self, answers: Mapping[str, Iterable[str]]) -> None:
        self._lock = threading.Lock()
        self._answers: dict[str, list[str]] = {}
        self.queries: Counter[str] = Counter()
        for name, addresses in answers.items():
            self.set(name, addresses)

    def set(self, name: str, addresses: Iterable[str]) -> None:
        checked = [str(ipaddress.ip_address(address)) for address in addresses]
        with self._lock:
            self._answers[name.lower().rstrip(".")] = checked

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        with self._lock:
            addresses = self._answers.get(name)
            self.queries[name] += 1
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for text in addresses:
            address = ipaddress.ip_address(text)
            if request.q.qtype == QTYPE.A and address.version == 4:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(text), ttl=TTL))
            elif request.q.qtype == QTYPE.AAAA and address.version == 6:
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(text), ttl=TTL))
        return reply


class LabDns:
    """``with LabDns({"good.lab": ["127.0.0.2"]}) as dns:`` then ``dns.address``."""

    def __init__(self, answers: Mapping[str, Iterable[str]]) -> None:
        self._table = _Table(answers)
        errors_only = DNSLogger(log="error")
        self._server = DNSServer(self._table, address="127.0.0.1", port=0, logger=errors_only)

    @property
    def address(self) -> str:
        host, port = self._server.server.server_address
        return f"{host}:{port}"

    def answer(self, name: str, addresses: Iterable[str]) -> None:
        """From now on ``name`` resolves to ``addresses``."""
        self._table.set(name, addresses)

    def queries(self, name: str) -> int:
        """How many queries for ``name`` (any type) were answered so far."""
        with self._table._lock:
            return self._table.queries[name.lower().rstrip(".")]

    def __enter__(self) -> LabDns:
        self._server.start_thread()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.stop()
        self._server.server.server_close()
