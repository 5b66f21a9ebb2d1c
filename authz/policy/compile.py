"""Validated policy documents into the engine's CompiledPolicy.

Checks what no single document can: an identity claimed by two policies, two
policies of one name, rule and exception ids repeated within a policy, an
identity revoked twice, and break-glass exceptions that would stay open
longer than the maximum lifetime (counted from the moment of loading).
"""

from __future__ import annotations

import gc
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from authz.core.compiled import CompiledPolicy, HostIndex, NetworkIndex, Revocation, ServicePolicy
from authz.core.decision import Mode
from authz.core.destination import HostPattern
from authz.core.rule import Rule
from authz.policy.errors import PolicyError, Problem
from authz.policy.load import Loaded, PolicySet, load_paths
from authz.policy.model import EgressException, EgressPolicy, EgressRevocation, EgressRule, HttpMatch

__all__ = [
    "DEFAULT_MAX_EXCEPTION_DAYS",
    "CompileOptions",
    "compile_policies",
    "exception_too_long",
    "gc_paused",
    "load_policy",
]

DEFAULT_MAX_EXCEPTION_DAYS = 30.0
_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class CompileOptions:
    """``mode`` DRY_RUN makes the whole zone dry-run; ``now`` (seconds since
    the epoch, default the clock) is the load time the maximum lifetime of
    exceptions counts from."""

    mode: Mode = Mode.ENFORCE
    max_exception_days: float = DEFAULT_MAX_EXCEPTION_DAYS
    now: float | None = None


def load_policy(
    paths: Sequence[str | Path], options: CompileOptions | None = None
) -> tuple[PolicySet, CompiledPolicy]:
    """Load and compile in one step; raise PolicyError on any problem."""
    with gc_paused():
        policy_set = load_paths(paths)
        if not policy_set.policies:
            raise PolicyError([Problem(" ".join(map(str, paths)), 0, "no EgressPolicy documents found")])
        return policy_set, compile_policies(policy_set, options)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Building a large policy allocates millions of objects that all live on;
    the cyclic GC would rescan them again and again (half of compile time at
    100,000 rules), so it waits until the policy is built. Then they are
    frozen (moved to the permanent generation): a full collection walking
    them holds the GIL for seconds, a stall of every check in a server
    (1.5 s measured at 100,000 rules). Reference counting still frees them
    when a reload drops them; a policy holds no reference cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def exception_too_long(exception: EgressException, since: float, max_days: float) -> bool:
    """The one definition of a break-glass exception's maximum lifetime: open
    more than ``max_days`` after ``since`` (compile: the load; lint: the
    commit that added it, so that renewing is not closing)."""
    return exception.expires.timestamp() - since > max_days * _DAY


def compile_policies(policy_set: PolicySet, options: CompileOptions | None = None) -> CompiledPolicy:
    """Compile every policy of ``policy_set``; raise PolicyError on conflicts."""
    with gc_paused():
        return _Compiler(options or CompileOptions()).compile(policy_set)


class _Compiler:
    def __init__(self, options: CompileOptions) -> None:
        self.options = options
        self.now = time.time() if options.now is None else options.now
        self.problems: list[Problem] = []
        self.shared: dict[object, Any] = {}  # interned port, method and path sets

    def compile(self, policy_set: PolicySet) -> CompiledPolicy:
        services: list[ServicePolicy] = []
        by_identity: dict[str, ServicePolicy] = {}
        by_prefix: dict[str, ServicePolicy] = {}
        claimed: dict[str, str] = {}  # identity pattern -> policy name
        names: dict[str, str] = {}  # policy name -> file
        for loaded in policy_set.policies:
            policy, source = loaded.model, loaded.source
            name = policy.metadata.name
            if name in names:
                self.problems.append(
                    source.problem(("metadata", "name"), f"policy {name!r} is also defined in {names[name]}")
                )
                continue
            names[name] = source.file
            service = self._service(loaded)
            services.append(service)
            for index, pattern in enumerate(policy.spec.identities):
                text = str(pattern)
                if text in claimed:
                    message = (
                        f"{text} is already claimed by policy {claimed[text]!r}: an identity has one policy"
                    )
                    self.problems.append(source.problem(("spec", "identities", index), message))
                    continue
                claimed[text] = name
                (by_prefix if pattern.is_prefix else by_identity)[pattern.key] = service
        revoked, revoked_prefix = self._revocations(policy_set.revocations)
        if self.problems:
            raise PolicyError(self.problems)
        return CompiledPolicy(
            version=policy_set.version,
            services=tuple(services),
            by_identity=by_identity,
            by_prefix=by_prefix,
            revoked=revoked or None,
            revoked_prefix=revoked_prefix or None,
            mode=self.options.mode,
        )

    def _service(self, loaded: Loaded[EgressPolicy]) -> ServicePolicy:
        policy, source = loaded.model, loaded.source
        name = policy.metadata.name
        rules: list[Rule] = []
        seen: set[str] = set()
        for index, spec in enumerate(policy.spec.egress):
            if spec.id in seen:
                self.problems.append(
                    source.problem(("spec", "egress", index, "id"), f"duplicate rule id {spec.id!r}")
                )
                continue
            seen.add(spec.id)
            rules.append(self._rule(name, spec, spec.purpose))
        exceptions: list[Rule] = []
        for index, exception in enumerate(policy.spec.exceptions):
            loc = ("spec", "exceptions", index)
            if exception.id in seen:
                message = f"duplicate id {exception.id!r}: rules and exceptions share one namespace"
                self.problems.append(source.problem((*loc, "id"), message))
                continue
            seen.add(exception.id)
            if self._too_long(exception):
                message = (
                    f"exception {exception.id} expires {exception.expires.isoformat()}, beyond the maximum lifetime"
                    f" of {self.options.max_exception_days:g} days: break-glass exceptions are short-lived"
                )
                self.problems.append(source.problem((*loc, "expires"), message))
                continue
            exceptions.append(self._rule(name, exception, exception.reason, exception))
        return ServicePolicy(
            name=name,
            owner=policy.metadata.owner,
            change_ref=policy.metadata.change_ref,
            mode=policy.spec.mode,
            zones=frozenset(policy.spec.zones) if policy.spec.zones is not None else None,
            allow_sni_host_mismatch=policy.spec.allow_sni_host_mismatch,
            identities=tuple(str(pattern) for pattern in policy.spec.identities),
            rules=tuple(rules),
            index=host_index(rules),
            exceptions=host_index(exceptions) if exceptions else None,
        )

    def _too_long(self, exception: EgressException) -> bool:
        return exception_too_long(exception, self.now, self.options.max_exception_days)

    def _rule(
        self,
        policy: str,
        spec: EgressRule | EgressException | _AllowOnly,
        purpose: str | None = None,
        exception: EgressException | None = None,
    ) -> Rule:
        """``shared`` interns the port, method and path sets: most rules repeat a
        few of them, and sharing keeps 100,000 rules well inside memory budget."""
        shared = self.shared
        ports = tuple(spec.ports)
        single = frozenset(low for low, high in ports if low == high)
        ranges = tuple(sorted({(low, high) for low, high in ports if low != high}))
        text = ", ".join([*map(str, sorted(single)), *(f"{low}-{high}" for low, high in ranges)])
        http: HttpMatch | None = spec.http
        methods = frozenset(http.methods) if http is not None and http.methods is not None else None
        paths = tuple(http.paths) if http is not None and http.paths is not None else None
        return Rule(
            id=spec.id,
            policy=policy,
            hosts=tuple(spec.hosts),
            ports=shared.setdefault(single, single),
            port_ranges=shared.setdefault(ranges, ranges),
            port_text=shared.setdefault(text, text),
            methods=shared.setdefault(methods, methods),
            paths=shared.setdefault(paths, paths),
            purpose=purpose,
            expires=exception.expires.timestamp() if exception is not None else None,
            owner=exception.owner if exception is not None else None,
            ticket=exception.ticket if exception is not None else None,
        )

    def _revocations(
        self, documents: Iterable[Loaded[EgressRevocation]]
    ) -> tuple[dict[str, Revocation], dict[str, Revocation]]:
        exact: dict[str, Revocation] = {}
        prefix: dict[str, Revocation] = {}
        where: dict[str, str] = {}
        for loaded in documents:
            document, source = loaded.model, loaded.source
            for index, entry in enumerate(document.spec.revoked):
                text = str(entry.identity)
                if text in where:
                    message = f"{text} is already revoked in {where[text]}: one entry an identity"
                    self.problems.append(source.problem(("spec", "revoked", index, "identity"), message))
                    continue
                where[text] = source.file
                allow_only = None
                if entry.allow_only is not None:
                    allowed = [
                        self._rule(document.metadata.name, _AllowOnly(f"allow_only[{n}]", d.hosts, d.ports))
                        for n, d in enumerate(entry.allow_only)
                    ]
                    allow_only = host_index(allowed)
                revocation = Revocation(
                    pattern=text,
                    source=document.metadata.name,
                    reason=entry.reason,
                    by=entry.by,
                    ticket=entry.ticket,
                    at=entry.at.timestamp(),
                    allow_only=allow_only,
                )
                (prefix if entry.identity.is_prefix else exact)[entry.identity.key] = revocation
        return exact, prefix


@dataclass(frozen=True, slots=True)
class _AllowOnly:
    """A containment destination, shaped like a rule's spec for _rule."""

    id: str
    hosts: list[HostPattern]
    ports: list[tuple[int, int]]
    http: HttpMatch | None = None


def host_index(rules: Iterable[Rule]) -> HostIndex:
    """Rules by host: exact, wildcard suffix, and CIDR bucketed by prefix length."""
    exact: dict[str, list[Rule]] = defaultdict(list)
    wildcard: dict[str, list[Rule]] = defaultdict(list)
    networks: dict[tuple[int, int], dict[int, list[Rule]]] = defaultdict(lambda: defaultdict(list))
    for rule in rules:
        for host in rule.hosts:
            if host.kind == "exact":
                target = exact[host.value]
            elif host.kind == "wildcard":
                target = wildcard[host.value]
            else:
                network = host.network
                assert network is not None
                shift = network.max_prefixlen - network.prefixlen
                target = networks[(network.version, network.prefixlen)][int(network.network_address) >> shift]
            if rule not in target:  # a host listed twice in one rule
                target.append(rule)
    buckets = tuple(
        (version, prefixlen, {key: tuple(found) for key, found in table.items()})
        for (version, prefixlen), table in sorted(networks.items(), key=lambda item: -item[0][1])
    )
    return HostIndex(_freeze(exact), _freeze(wildcard), NetworkIndex(buckets))


def _freeze(index: dict[str, list[Rule]]) -> dict[str, tuple[Rule, ...]]:
    return {key: tuple(rules) for key, rules in index.items()}
