"""Per-identity rate limits declared in policy, enforced by Envoy rather than
in authz's memory, so that they hold across authz replicas: the local rate
limit filter (a bucket per gateway instance) and the global rate limit
service (envoyproxy/ratelimit with Redis, one bucket across gateways).

authz only names the bucket: with ``--rate-limit-headers`` it sets
``x-egress-identity``, ``x-egress-policy`` and ``x-egress-rule`` on every
allowed request. The filters turn them into the descriptor
``[egress_policy=P, egress_rule=R, egress_identity=*]`` (a bucket per
identity), and the routes strip them before the request leaves the zone.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from envoy_data_plane.envoy.config.core.v3 import (
    ApiVersion,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    RuntimeFractionalPercent,
)
from envoy_data_plane.envoy.config.ratelimit.v3 import RateLimitServiceConfig
from envoy_data_plane.envoy.config.route.v3 import RateLimit, RateLimitAction, RateLimitActionRequestHeaders
from envoy_data_plane.envoy.extensions.common.ratelimit.v3 import (
    LocalRateLimitDescriptor,
    RateLimitDescriptorEntry,
    XRateLimitHeadersRfcVersion,
)
from envoy_data_plane.envoy.extensions.filters.http.local_ratelimit.v3 import LocalRateLimit
from envoy_data_plane.envoy.extensions.filters.http.ratelimit.v3 import RateLimit as GlobalRateLimit
from envoy_data_plane.envoy.extensions.filters.http.ratelimit.v3 import RateLimitXRateLimitHeadersRfcVersion
from envoy_data_plane.envoy.type.v3 import FractionalPercent, FractionalPercentDenominatorType, TokenBucket
from envoy_data_plane.google.protobuf import Any as AnyMessage

from authz.ext_authz.response import RATE_LIMIT_HEADERS
from authz.policy.load import PolicySet

__all__ = [
    "DOMAIN",
    "RATE_LIMIT_CLUSTER",
    "Limit",
    "global_filter",
    "limits_from",
    "local_filter",
    "route_rate_limits",
    "service_config",
]

DOMAIN = "egress-authz"
RATE_LIMIT_CLUSTER = "egress_ratelimit"
_KEYS = ("egress_identity", "egress_policy", "egress_rule")  # in RATE_LIMIT_HEADERS order
_ORDER = ("egress_policy", "egress_rule", "egress_identity")  # the descriptor's entries, outermost first


@dataclass(frozen=True, slots=True)
class Limit:
    """``requests`` per ``seconds`` for each identity on one rule."""

    policy: str
    rule: str
    requests: int
    seconds: int
    unit: str  # second, minute, hour or day: envoyproxy/ratelimit's unit


def limits_from(policy_set: PolicySet) -> tuple[Limit, ...]:
    """Every rule's limit: its own ``rate_limit``, else its policy's."""
    found = []
    for loaded in policy_set.policies:
        spec = loaded.model.spec
        for rule in spec.egress:
            limit = rule.rate_limit or spec.rate_limit
            if limit is not None:
                found.append(
                    Limit(loaded.model.metadata.name, rule.id, limit.requests, limit.seconds, limit.per)
                )
    return tuple(found)


def _actions() -> list[RateLimit]:
    headers = dict(zip(_KEYS, RATE_LIMIT_HEADERS, strict=True))
    return [
        RateLimit(
            actions=[
                RateLimitAction(
                    request_headers=RateLimitActionRequestHeaders(
                        header_name=headers[key], descriptor_key=key, skip_if_absent=True
                    )
                )
                for key in _ORDER
            ]
        )
    ]


def route_rate_limits() -> list[RateLimit]:
    """The route's descriptor actions, for the global filter."""
    return _actions()


def _all_requests() -> RuntimeFractionalPercent:
    return RuntimeFractionalPercent(
        default_value=FractionalPercent(numerator=100, denominator=FractionalPercentDenominatorType.HUNDRED),
        runtime_key="egress_ratelimit.enforced",
    )


def local_filter(limits: Iterable[Limit], max_identities: int) -> tuple[str, AnyMessage]:
    """``envoy.filters.http.local_ratelimit``: one token bucket per (rule, identity)
    in this gateway, ``max_identities`` identities remembered per rule."""
    descriptors = [
        LocalRateLimitDescriptor(
            entries=[
                RateLimitDescriptorEntry(key="egress_policy", value=limit.policy),
                RateLimitDescriptorEntry(key="egress_rule", value=limit.rule),
                RateLimitDescriptorEntry(key="egress_identity"),  # no value: a bucket per identity
            ],
            token_bucket=TokenBucket(
                max_tokens=limit.requests,
                tokens_per_fill=limit.requests,
                fill_interval=datetime.timedelta(seconds=limit.seconds),
            ),
        )
        for limit in limits
    ]
    config = LocalRateLimit(
        stat_prefix="egress_ratelimit",
        filter_enabled=_all_requests(),
        filter_enforced=_all_requests(),
        descriptors=descriptors,
        rate_limits=_actions(),
        max_dynamic_descriptors=max_identities,
        enable_x_ratelimit_headers=XRateLimitHeadersRfcVersion.DRAFT_VERSION_03,  # x-ratelimit-* to clients
    )
    return "envoy.filters.http.local_ratelimit", AnyMessage.pack(config)


def global_filter(timeout_ms: int = 100) -> tuple[str, AnyMessage]:
    """``envoy.filters.http.ratelimit`` asking the rate limit service over
    gRPC. If the service is down, requests pass (failure_mode_deny false):
    authorization is authz's job; losing a rate limit must not stop egress."""
    config = GlobalRateLimit(
        domain=DOMAIN,
        timeout=datetime.timedelta(milliseconds=timeout_ms),
        failure_mode_deny=False,
        rate_limit_service=RateLimitServiceConfig(
            grpc_service=GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=RATE_LIMIT_CLUSTER)),
            transport_api_version=ApiVersion.V3,
        ),
        enable_x_ratelimit_headers=RateLimitXRateLimitHeadersRfcVersion.DRAFT_VERSION_03,
    )
    return "envoy.filters.http.ratelimit", AnyMessage.pack(config)


def service_config(limits: Iterable[Limit]) -> dict[str, Any]:
    """envoyproxy/ratelimit's configuration file (its ``RUNTIME_ROOT`` config/*.yaml)."""
    by_policy: dict[str, list[Limit]] = {}
    for limit in limits:
        by_policy.setdefault(limit.policy, []).append(limit)
    return {
        "domain": DOMAIN,
        "descriptors": [
            {
                "key": "egress_policy",
                "value": policy,
                "descriptors": [
                    {
                        "key": "egress_rule",
                        "value": limit.rule,
                        "descriptors": [
                            {
                                "key": "egress_identity",  # no value: each identity its own limit
                                "rate_limit": {"unit": limit.unit, "requests_per_unit": limit.requests},
                            }
                        ],
                    }
                    for limit in rules
                ],
            }
            for policy, rules in by_policy.items()
        ],
    }
