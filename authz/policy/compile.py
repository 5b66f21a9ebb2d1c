"""Validated policy documents into the engine's CompiledPolicy.

Checks what no single document can: an identity claimed by two policies, two
policies of one name, rule ids repeated within a policy.
"""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from authz.core.compiled import CompiledPolicy, NetworkIndex, ServicePolicy
from authz.core.destination import HostPattern
from authz.core.rule import Rule
from authz.policy.errors import PolicyError, Problem
from authz.policy.load import Loaded, PolicySet, load_paths
from authz.policy.model import EgressPolicy, EgressRule

__all__ = ["compile_policies", "gc_paused", "load_policy"]


def load_policy(paths: Sequence[str | Path]) -> tuple[PolicySet, CompiledPolicy]:
    """Load and compile in one step; raise PolicyError on any problem."""
    with gc_paused():
        policy_set = load_paths(paths)
        if not policy_set.policies:
            raise PolicyError([Problem(" ".join(map(str, paths)), 0, "no EgressPolicy documents found")])
        return policy_set, compile_policies(policy_set)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Building a large policy allocates millions of objects that all live on;
    the cyclic GC would rescan them again and again (half of compile time at
    100,000 rules), so it waits until the policy is built."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compile_policies(policy_set: PolicySet) -> CompiledPolicy:
    """Compile every policy of ``policy_set``; raise PolicyError on conflicts."""
    with gc_paused():
        return _compile(policy_set)


def _compile(policy_set: PolicySet) -> CompiledPolicy:
    problems: list[Problem] = []
    services: list[ServicePolicy] = []
    by_identity: dict[str, ServicePolicy] = {}
    by_prefix: dict[str, ServicePolicy] = {}
    claimed: dict[str, str] = {}  # identity pattern -> policy name
    shared: dict[object, Any] = {}
    names: dict[str, str] = {}  # policy name -> file
    for loaded in policy_set.policies:
        policy, source = loaded.model, loaded.source
        name = policy.metadata.name
        if name in names:
            problems.append(
                source.problem(("metadata", "name"), f"policy {name!r} is also defined in {names[name]}")
            )
            continue
        names[name] = source.file
        service = _compile_service(loaded, problems, shared)
        services.append(service)
        for index, pattern in enumerate(policy.spec.identities):
            text = str(pattern)
            if text in claimed:
                problems.append(
                    source.problem(
                        ("spec", "identities", index),
                        f"{text} is already claimed by policy {claimed[text]!r}: an identity has one policy",
                    )
                )
                continue
            claimed[text] = name
            (by_prefix if pattern.is_prefix else by_identity)[pattern.key] = service
    if problems:
        raise PolicyError(problems)
    return CompiledPolicy(
        version=policy_set.version,
        services=tuple(services),
        by_identity=by_identity,
        by_prefix=by_prefix,
    )


def _compile_service(
    loaded: Loaded[EgressPolicy], problems: list[Problem], shared: dict[object, Any]
) -> ServicePolicy:
    policy, source = loaded.model, loaded.source
    name = policy.metadata.name
    rules: list[Rule] = []
    exact: dict[str, list[Rule]] = defaultdict(list)
    wildcard: dict[str, list[Rule]] = defaultdict(list)
    networks: dict[tuple[int, int], dict[int, list[Rule]]] = defaultdict(lambda: defaultdict(list))
    seen: set[str] = set()
    for index, spec in enumerate(policy.spec.egress):
        if spec.id in seen:
            problems.append(source.problem(("spec", "egress", index, "id"), f"duplicate rule id {spec.id!r}"))
            continue
        seen.add(spec.id)
        rule = _compile_rule(name, spec, shared)
        rules.append(rule)
        for host in rule.hosts:
            _index_host(host, rule, exact, wildcard, networks)
    buckets = tuple(
        (version, prefixlen, {key: tuple(found) for key, found in table.items()})
        for (version, prefixlen), table in sorted(networks.items(), key=lambda item: -item[0][1])
    )
    return ServicePolicy(
        name=name,
        owner=policy.metadata.owner,
        change_ref=policy.metadata.change_ref,
        mode=policy.spec.mode,
        zones=frozenset(policy.spec.zones) if policy.spec.zones is not None else None,
        allow_sni_host_mismatch=policy.spec.allow_sni_host_mismatch,
        identities=tuple(str(pattern) for pattern in policy.spec.identities),
        rules=tuple(rules),
        exact=_freeze(exact),
        wildcard=_freeze(wildcard),
        networks=NetworkIndex(buckets),
    )


def _compile_rule(policy: str, spec: EgressRule, shared: dict[object, Any]) -> Rule:
    """``shared`` interns the port, method and path sets: most rules repeat a
    few of them, and sharing keeps 100,000 rules well inside memory budget."""
    ports = tuple(spec.ports)
    single = frozenset(low for low, high in ports if low == high)
    ranges = tuple(sorted({(low, high) for low, high in ports if low != high}))
    text = ", ".join([*map(str, sorted(single)), *(f"{low}-{high}" for low, high in ranges)])
    http = spec.http
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
        purpose=spec.purpose,
    )


def _index_host(
    host: HostPattern,
    rule: Rule,
    exact: dict[str, list[Rule]],
    wildcard: dict[str, list[Rule]],
    networks: dict[tuple[int, int], dict[int, list[Rule]]],
) -> None:
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


def _freeze(index: dict[str, list[Rule]]) -> dict[str, tuple[Rule, ...]]:
    return {key: tuple(rules) for key, rules in index.items()}
