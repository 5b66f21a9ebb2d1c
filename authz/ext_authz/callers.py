"""Who may ask authz for decisions.

With ``authz serve --tls-cert ... --allow-caller ID``, a Check call is
answered only for a caller whose certificate, verified against
``--client-ca`` by the transport's TLS, names an allowed SPIFFE ID. The rest
get UNAUTHENTICATED (no certificate) or PERMISSION_DENIED (an ID not
allowed) and never a decision: a decision would tell a stranger what the
policy allows. Transports find the peer's ID (grpcio: the TLS session's
``peer_spiffe_id``; pyvoy: the URI Envoy puts in ``x-forwarded-client-cert``,
replacing any the client sent) and ask here.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

from authz.core.identity import IdentityPattern, InvalidSpiffeId, parse_identity_pattern, parse_spiffe_id
from authz.ext_authz.check import CheckOutcome

__all__ = ["CallerCheck", "PERMISSION_DENIED", "UNAUTHENTICATED"]

PERMISSION_DENIED, UNAUTHENTICATED = 7, 16  # grpc.StatusCode values
MAX_LOGGED = 100  # distinct refused callers logged (each once); the counter has them all
log = logging.getLogger("authz.server")

_NO_CERTIFICATE = CheckOutcome(UNAUTHENTICATED, message="a client certificate is required")
_NOT_ALLOWED = CheckOutcome(PERMISSION_DENIED, message="this caller may not ask for decisions")


class CallerCheck:
    """The allowed callers (exact SPIFFE IDs and ``/*`` prefixes) and the
    refusals counted by cause (``no_certificate``, ``not_allowed``)."""

    def __init__(self, allowed: Sequence[str]) -> None:
        if not allowed:
            raise ValueError("name at least one --allow-caller")
        self.patterns: tuple[IdentityPattern, ...] = tuple(parse_identity_pattern(p) for p in allowed)
        self.refused: Counter[str] = Counter()
        self._logged: set[str | None] = set()
        self.allows = lru_cache(maxsize=1024)(self._allows)  # a few gateways call, often

    def _allows(self, spiffe_id: str) -> bool:
        try:
            identity = parse_spiffe_id(spiffe_id)
        except InvalidSpiffeId:
            return False
        return any(pattern.covers(identity) for pattern in self.patterns)

    def refusal(self, spiffe_id: str | None) -> CheckOutcome | None:
        """None when ``spiffe_id`` (the verified peer's, None without one) may
        ask; otherwise the outcome to answer with, counted."""
        if spiffe_id is not None and self.allows(spiffe_id):
            return None
        cause = "no_certificate" if spiffe_id is None else "not_allowed"
        self.refused[cause] += 1
        if spiffe_id not in self._logged and len(self._logged) < MAX_LOGGED:
            self._logged.add(spiffe_id)
            log.warning("refused a Check from %s (%s)", spiffe_id or "a caller without a certificate", cause)
        return _NO_CERTIFICATE if spiffe_id is None else _NOT_ALLOWED
