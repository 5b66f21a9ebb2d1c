"""What the engine decides on: one outbound request or connection."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["EgressRequest"]


class EgressRequest(NamedTuple):
    """An egress attempt as the gateway saw it, before any normalization.

    A NamedTuple rather than a frozen dataclass for the same reason as
    Decision: it is built on every check and costs a third as much.

    ``host`` is the HTTP authority's host (or CONNECT target); ``sni`` the TLS
    server name. A TCP/TLS connection has no ``method``; ``port`` absent means
    the ``scheme``'s default port.
    """

    identity: str | None
    host: str | None = None
    port: int | None = None
    sni: str | None = None
    method: str | None = None
    path: str | None = None
    zone: str | None = None
    scheme: str | None = None

    @property
    def named_host(self) -> str | None:
        """The destination as the request names it: the HTTP host, else the SNI."""
        return self.host if self.host is not None else self.sni
