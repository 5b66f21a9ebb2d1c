"""The state store: first-seen (zone, identity, destination) pairs shared by
every replica, worker and restart, in Redis or Valkey, through redis-py's
asyncio client (``authz serve --state-store URL``, ``authz baseline``).

A pair is one key, ``egress-authz:first-seen:v1:["zone","identity","host:port"]``
(the JSON array keeps any separator a zone or an identity might hold from
joining two pairs into one), whose value says who saw it first: the time, the
decision id and the verdict, as JSON. The first sighting writes it with
``SET NX EX``: exactly one writer in the fleet gets OK, every other one
nothing. The key expires after the TTL, so a pair unused that long is new
again; a process that learns an existing pair from the store (its first
sighting since it started) sets the TTL afresh (``EXPIRE``): the pair is in use.

Nothing here is on the check path: ``fleet`` calls it from the worker's
event loop, after the answer, and treats every failure as "judge locally".
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

__all__ = [
    "DEFAULT_TTL",
    "KEY_PREFIX",
    "PASSWORD_ENV",
    "Sighting",
    "StateStore",
    "StateStoreURLError",
    "cause_of",
    "check_url",
    "pair_key",
    "redacted",
]

KEY_PREFIX = "egress-authz:first-seen:v1:"
DEFAULT_TTL = 90 * 86400.0  # seconds: a path unused for a quarter alarms again
#: The store's password when the URL carries none (a Kubernetes Secret, kept out of the URL's ConfigMap).
PASSWORD_ENV = "AUTHZ_STATE_STORE_PASSWORD"
_SCHEMES = ("redis", "rediss", "unix")
#: Query parameters a URL may carry (redis-py reads them): TLS files and checks, the database of a
#: Unix socket, a client name. Anything else is refused before anything listens, rather than fail later.
_QUERY = frozenset(
    {"db", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
)
_DB = re.compile(r"/?(\d{1,5})?")


class StateStoreURLError(ValueError):
    """A ``--state-store`` URL that could never work: wrong scheme, no host, a bad port or database."""


def check_url(url: str) -> str:
    """``url`` when it names a store redis-py can reach (``redis://HOST:PORT/DB``,
    ``rediss://`` for TLS, ``unix:///path.sock?db=N``), else StateStoreURLError
    saying what is wrong (the password never in it)."""
    shown = redacted(url)
    try:
        parts = urlsplit(url)
        port = parts.port  # a port that is not a number, or out of range, raises here
    except ValueError as error:
        raise StateStoreURLError(f"{shown}: {error}") from None
    if parts.scheme not in _SCHEMES or not url.startswith(f"{parts.scheme}://"):
        raise StateStoreURLError(f"{shown}: the scheme is one of redis://, rediss:// (TLS), unix://")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - _QUERY)
    if unknown:
        raise StateStoreURLError(f"{shown}: unknown parameter {', '.join(unknown)}")
    db = query.get("db", [None])[-1]
    if db is not None and not db.isdigit():
        raise StateStoreURLError(f"{shown}: db={db} is not a database number")
    if parts.scheme == "unix":
        if not parts.path.startswith("/") or parts.netloc not in ("", "localhost"):
            raise StateStoreURLError(f"{shown}: a Unix socket is unix:///absolute/path.sock[?db=N]")
        return url
    if not parts.hostname:
        raise StateStoreURLError(f"{shown}: no host (redis://HOST:PORT/DB)")
    if port == 0:
        raise StateStoreURLError(f"{shown}: port 0")
    if _DB.fullmatch(parts.path) is None:
        raise StateStoreURLError(f"{shown}: the path is the database number (redis://HOST:PORT/0)")
    return url


def redacted(url: str) -> str:
    """The URL for logs and messages: a password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<a URL that cannot be read>"


def pair_key(zone: str | None, identity: str, destination: str) -> str:
    """The store's key of a (zone, identity, ``host:port``) pair."""
    return KEY_PREFIX + json.dumps([zone, identity, destination], separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Sighting:
    """A pair, and what the store keeps about the first time the fleet saw it."""

    zone: str | None
    identity: str
    destination: str
    time: str  # RFC 3339, as the decision log writes it
    decision_id: str | None
    verdict: str | None
    by: str = "authz serve"  # or "authz baseline"

    @property
    def key(self) -> str:
        return pair_key(self.zone, self.identity, self.destination)

    def value(self) -> str:
        return json.dumps(
            {"time": self.time, "decision_id": self.decision_id, "verdict": self.verdict, "by": self.by},
            separators=(",", ":"),
        )


def cause_of(error: BaseException) -> str:
    """The ``cause`` label of a failure: ``timeout``, ``connection`` (refused,
    reset, TLS, DNS), ``auth`` (a wrong password or user), ``response`` (the
    store answered with an error: READONLY, OOM, MISCONF ...), or ``error``."""
    from redis import exceptions

    if isinstance(error, (TimeoutError, exceptions.TimeoutError)):
        return "timeout"
    if isinstance(error, (exceptions.AuthenticationError, exceptions.AuthorizationError)):
        return "auth"
    if isinstance(error, (exceptions.ConnectionError, OSError)):
        return "connection"
    if isinstance(error, exceptions.ResponseError):
        return "response"
    return "error"


class StateStore:
    """One Redis (or Valkey) client, used on one event loop; every call takes
    one round trip (two for ``claim`` when some pairs were known), at most
    ``timeout`` each, and raises on failure (``cause_of`` names it), never
    retrying on its own: the caller decides when to try again."""

    def __init__(self, url: str, *, timeout: float = 1.0, password: str | None = None) -> None:
        self.url = check_url(url)
        self.shown = redacted(url)
        self.timeout = timeout
        self.password = password if password is not None else os.environ.get(PASSWORD_ENV) or None
        self._client: Any = None
        self._redis()  # redis-py's import (near a second on a busy machine) here, never on the event loop

    def _redis(self) -> Any:
        if self._client is None:
            from redis.asyncio import from_url
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            options: dict[str, Any] = {"password": self.password} if self.password else {}
            self._client = from_url(
                self.url,
                # A call is bounded as a whole by its caller (asyncio.wait_for): a timer on every read
                # of every reply cost more than the rest of the parsing.
                socket_timeout=None,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),  # the caller's backoff, not the client's
                client_name="egress-authz",
                **options,
            )
        return self._client

    async def _bounded(self, call: Any) -> Any:
        """One round trip, ``timeout`` at most (TimeoutError past it)."""
        return await asyncio.wait_for(call, self.timeout)

    async def ping(self) -> None:
        await self._bounded(self._redis().ping())

    async def claim(self, sightings: Sequence[Sighting], ttl: float) -> list[bool]:
        """Write each pair unless the store has it (SET NX EX, one round trip
        for all): True for a pair this call wrote (new to the fleet), False for
        one already there, which then gets the whole TTL again (EXPIRE, a second
        round trip for those only): it is in use."""
        seconds = max(1, int(ttl))
        pipe = self._redis().pipeline(transaction=False)
        for sighting in sightings:
            pipe.execute_command("SET", sighting.key, sighting.value(), "NX", "EX", seconds)
        written = [bool(reply) for reply in await self._bounded(pipe.execute())]
        if not all(written):
            pipe = self._redis().pipeline(transaction=False)
            for sighting, new in zip(sightings, written, strict=True):
                if not new:
                    pipe.execute_command("EXPIRE", sighting.key, seconds)
            await self._bounded(pipe.execute())
        return written

    async def touch(self, keys: Sequence[str], ttl: float) -> int:
        """The whole TTL again for each key the store has (EXPIRE: one missing stays
        missing); how many it had."""
        pipe = self._redis().pipeline(transaction=False)
        for key in keys:
            pipe.execute_command("EXPIRE", key, max(1, int(ttl)))
        return sum(bool(reply) for reply in await self._bounded(pipe.execute()))

    async def claim_each(self, sightings: Sequence[tuple[Sighting, float]]) -> list[bool]:
        """``claim`` with a TTL a pair (``authz baseline``: what is left of it
        since the pair was last seen); a pair already there is left be."""
        pipe = self._redis().pipeline(transaction=False)
        for sighting, ttl in sightings:
            pipe.execute_command("SET", sighting.key, sighting.value(), "NX", "EX", max(1, int(ttl)))
        return [bool(reply) for reply in await self._bounded(pipe.execute())]

    async def known(self, keys: Sequence[str]) -> list[bool]:
        """Whether each key is in the store (EXISTS, one round trip)."""
        pipe = self._redis().pipeline(transaction=False)
        for key in keys:
            pipe.exists(key)
        return [bool(reply) for reply in await self._bounded(pipe.execute())]

    async def reset(self) -> None:
        """Drop the connections (after a failure): the next call connects anew."""
        if self._client is not None:
            await self._client.connection_pool.disconnect()

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
