"""An independent judge of the check's answers, for the fuzz tests.

Every answer is compared with ``authz explain``'s code path on the decoded
request (the attributes parser, then the engine's explain); every allow must
then be granted by the policy *documents* (the validated YAML, not the
compiled indexes), read here by rules written from the README alone, with no
normalization of the request: the destination is the ASCII text the proxy
forwards, folded only in ASCII case and one trailing dot. A bug in the
engine's indexes, in host normalization or in the precedence shows as an
allow this module cannot explain.
"""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from authz.core.compiled import CompiledPolicy
from authz.core.decision import Decision, Mode, Reason
from authz.core.destination import DEFAULT_PORTS, HostPattern
from authz.core.engine import explain
from authz.core.identity import IdentityPattern
from authz.core.metadata_endpoints import METADATA_ENDPOINTS
from authz.core.request import EgressRequest
from authz.ext_authz.attributes import GatewaySettings, egress_request
from authz.ext_authz.check import INVALID_ARGUMENT, MAX_MESSAGE_BYTES, OK, RESOURCE_EXHAUSTED, CheckOutcome
from authz.ext_authz.wire.ext_authz_pb2 import CheckRequest, CheckResponse
from authz.policy.load import PolicySet
from authz.policy.model import Destination as AllowOnly
from authz.policy.model import EgressException, EgressPolicy, EgressRule

__all__ = ["Oracle"]

_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_AMBIGUOUS = ("/./", "/../", "%2e", "%2f", "%5c", "\\")


@dataclass(frozen=True, slots=True)
class Destination:
    """The destination as the proxy forwards it: an ASCII name folded in case
    and one trailing dot, or an IP address."""

    name: str | None
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None

    @property
    def text(self) -> str:
        return str(self.ip) if self.ip is not None else str(self.name)


def _destination(text: str) -> Destination | None:
    """None when the text is not something the proxy could forward unchanged."""
    if not text.isascii():
        return None
    bracketed = text.startswith("[") and text.endswith("]")
    bare = text[1:-1] if bracketed else text.removesuffix(".")  # "192.0.2.1." is that address too
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        pass
    else:
        if bracketed and ip.version != 6:
            return None  # brackets hold only IPv6
        if not bracketed and ip.version == 6 and bare != text:
            return None  # no trailing dot after an IPv6 address
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.scope_id is not None:
                return None
            if ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
        return Destination(None, ip)
    folded = text.lower().removesuffix(".")
    if len(folded) > 253 or _NAME.fullmatch(folded) is None:
        return None
    if re.fullmatch(r"0x[0-9a-f]*|[0-9]+", folded.rpartition(".")[2]):
        return None  # a number in disguise, which resolvers read as an IPv4 address
    return Destination(folded, None)


def _host_matches(pattern: HostPattern, destination: Destination) -> bool:
    if pattern.kind == "network":
        assert pattern.network is not None
        return destination.ip is not None and destination.ip in pattern.network
    if pattern.kind == "wildcard":
        name = destination.name
        return name is not None and "." in name and name.split(".", 1)[1] == pattern.value
    if destination.ip is not None:
        try:
            return ipaddress.ip_address(pattern.value) == destination.ip
        except ValueError:
            return False
    return pattern.value == destination.name


def _path_admitted(path: str | None, patterns: list[Any]) -> bool:
    if path is None:
        return False
    for mark in "?#":
        path = path.split(mark, 1)[0]
    lowered = path.lower()
    if not path.startswith("/") or any(p in lowered for p in _AMBIGUOUS) or lowered.endswith(("/.", "/..")):
        return False
    for pattern in patterns:
        kind, value = pattern.kind, pattern.value
        if kind == "any" or (kind == "exact" and path == value):
            return True
        if (kind == "prefix" and path.startswith(value)) or (kind == "suffix" and path.endswith(value)):
            return True
    return False


def _admits(
    rule: EgressRule | EgressException | AllowOnly,
    destination: Destination,
    port: int | None,
    request: EgressRequest,
) -> bool:
    if port is None or not any(low <= port <= high for low, high in rule.ports):
        return False
    if not any(_host_matches(host, destination) for host in rule.hosts):
        return False
    if not isinstance(rule, EgressRule | EgressException) or rule.http is None:
        return True
    method = request.method
    if method is None:
        return False
    if rule.http.methods is not None and not (method.isascii() and method.upper() in rule.http.methods):
        return False
    return rule.http.paths is None or _path_admitted(request.path, rule.http.paths)


def _covers(pattern: IdentityPattern, identity: str) -> int:
    """How specifically ``pattern`` names ``identity``: 0 not at all, a
    large number for the exact ID, else the prefix's length."""
    if not pattern.is_prefix:
        return 10**6 if pattern.key == identity else 0
    rest = identity.removeprefix(pattern.key + "/")
    if rest == identity:
        return 0
    segments = rest.split("/")
    if all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
        return len(pattern.key)
    return 0


@dataclass
class Oracle:
    policy_set: PolicySet
    compiled: CompiledPolicy
    settings: GatewaySettings

    def judge(self, data: bytes, outcome: CheckOutcome) -> Decision | None:
        """Raise AssertionError when the answer is wrong; the decision checked, if any."""
        if outcome.status != OK:
            if outcome.status == RESOURCE_EXHAUSTED:
                assert len(data) > MAX_MESSAGE_BYTES
                return None
            assert outcome.status == INVALID_ARGUMENT, outcome
            try:
                CheckRequest.FromString(data)
            except DecodeError:
                return None
            raise AssertionError("INVALID_ARGUMENT for bytes that are a CheckRequest")
        response = CheckResponse.FromString(outcome.body)
        metadata = dict(response.dynamic_metadata)
        request = egress_request(CheckRequest.FromString(data), self.settings)
        decision = explain(self.compiled, request).decision
        assert metadata["reason"] not in ("INTERNAL_ERROR", "TIMEOUT"), metadata
        assert (metadata["verdict"], metadata["reason"]) == (decision.verdict, decision.reason), (
            metadata,
            decision,
        )
        allowed = response.status.code == 0
        assert allowed is decision.allowed
        if allowed:
            self._granted(request, decision)
        return decision

    def _policy_for(self, identity: str) -> EgressPolicy | None:
        best: tuple[int, EgressPolicy | None] = (0, None)
        for loaded in self.policy_set.policies:
            for pattern in loaded.model.spec.identities:
                score = _covers(pattern, identity)
                if score > best[0]:
                    best = (score, loaded.model)
        return best[1]

    def _revoked(
        self, identity: str, destination: Destination, port: int | None, request: EgressRequest
    ) -> bool:
        """Revoked, and not contained to a destination its ``allow_only`` admits."""
        for loaded in self.policy_set.revocations:
            for entry in loaded.model.spec.revoked:
                if _covers(entry.identity, identity):
                    if entry.allow_only is None:
                        return True
                    if not any(_admits(d, destination, port, request) for d in entry.allow_only):
                        return True
        return False

    def _granted(self, request: EgressRequest, decision: Decision) -> None:
        """An allow must be what the documents grant this identity, for this destination."""
        identity = request.identity
        assert identity is not None, decision
        policy = self._policy_for(identity)
        assert policy is not None, f"allowed an identity no policy names: {decision}"
        assert decision.policy == policy.metadata.name, decision
        named = request.named_host
        assert named is not None, decision
        destination = _destination(named)
        assert destination is not None, (
            f"allowed a destination the proxy would not forward as such: {named!r}"
        )
        assert decision.host == destination.text, decision
        if request.host is not None and request.sni is not None and not policy.spec.allow_sni_host_mismatch:
            assert _destination(request.sni) == destination, f"allowed SNI {request.sni!r} for host {named!r}"
        port = request.port
        if port is None and request.scheme is not None:
            port = DEFAULT_PORTS.get(request.scheme.lower())
        assert decision.port == port, decision
        assert not self._revoked(identity, destination, port, request), decision
        if policy.spec.zones is not None:
            assert request.zone in policy.spec.zones, decision
        if destination.text in METADATA_ENDPOINTS:
            named_exactly = [
                r for r in policy.spec.egress
                if any(h.kind == "exact" and _host_matches(h, destination) for h in r.hosts)
                and _admits(r, destination, port, request)
            ]  # fmt: skip
            assert named_exactly, f"allowed a metadata endpoint no rule names: {decision}"
        if decision.reason is Reason.ALLOWED_BY_RULE:
            (rule,) = [r for r in policy.spec.egress if r.id == decision.rule]
            assert _admits(rule, destination, port, request), f"rule {rule.id} does not admit {request}"
        elif decision.reason is Reason.ALLOWED_BY_EXCEPTION:
            (grant,) = [e for e in policy.spec.exceptions if e.id == decision.exception]
            assert _admits(grant, destination, port, request), (
                f"exception {grant.id} does not admit {request}"
            )
            assert grant.expires.timestamp() > time.time(), f"exception {grant.id} has expired"
        else:
            assert decision.reason is Reason.DRY_RUN, decision
            assert Mode.DRY_RUN in (policy.spec.mode, self.compiled.mode), decision
