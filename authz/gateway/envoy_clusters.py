"""The gateway's clusters: authz, the rate limit service, and the egress
upstreams (fixed stand-ins for the demo and tests, or Envoy's dynamic
forward proxy resolving each destination)."""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any

from envoy_data_plane.envoy.config.cluster.v3 import (
    Cluster,
    ClusterCustomClusterType,
    ClusterDiscoveryType,
    ClusterDnsLookupFamily,
    ClusterLbPolicy,
)
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    DnsResolverOptions,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    Pipe,
    SocketAddress,
    TransportSocket,
    TypedExtensionConfig,
    UpstreamHttpProtocolOptions,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.extensions.clusters.dynamic_forward_proxy.v3 import ClusterConfig
from envoy_data_plane.envoy.extensions.common.dynamic_forward_proxy.v3 import DnsCacheConfig
from envoy_data_plane.envoy.extensions.network.dns_resolver.cares.v3 import CaresDnsResolverConfig
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    SubjectAltNameMatcher,
    SubjectAltNameMatcherSanType,
    TlsCertificate,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.google.protobuf import Any as AnyMessage

from authz.gateway.address_guard import resolved_address_filter
from authz.gateway.envoy_spec import GatewaySpec
from authz.gateway.ratelimit import RATE_LIMIT_CLUSTER

__all__ = [
    "AUTHZ_CLUSTER",
    "OTLP_CLUSTER",
    "authz_tls",
    "clusters",
    "dns_cache",
    "envoy_address",
    "pack",
    "upstream_tls",
]

AUTHZ_CLUSTER = "egress_authz"
OTLP_CLUSTER = "otlp_collector"


def pack(message: Any) -> AnyMessage:
    return AnyMessage.pack(message)


def envoy_address(text: str) -> Address:
    if text.startswith("unix:"):
        return Address(pipe=Pipe(path=text.removeprefix("unix:")))
    host, _, port = text.rpartition(":")
    return Address(socket_address=SocketAddress(address=host.strip("[]"), port_value=int(port)))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _static_cluster(name: str, address: str, **options: Any) -> Cluster:
    """A cluster of one address; a DNS name (a Kubernetes Service, a compose
    service) is resolved by Envoy and re-resolved as it changes (STRICT_DNS)."""
    endpoint = LbEndpoint(endpoint=Endpoint(address=envoy_address(address)))
    by_name = not address.startswith("unix:") and not _is_ip(address.rpartition(":")[0])
    if by_name:
        options.setdefault("dns_lookup_family", ClusterDnsLookupFamily.V4_PREFERRED)
    return Cluster(
        name=name,
        type=ClusterDiscoveryType.STRICT_DNS if by_name else ClusterDiscoveryType.STATIC,
        connect_timeout=datetime.timedelta(seconds=2),
        load_assignment=ClusterLoadAssignment(
            cluster_name=name, endpoints=[LocalityLbEndpoints(lb_endpoints=[endpoint])]
        ),
        **options,
    )


def upstream_tls(spec: GatewaySpec) -> TransportSocket:
    """TLS from the gateway to the destination, validating its certificate."""
    trusted = DataSource(filename=spec.upstream_ca or "/etc/ssl/certs/ca-certificates.crt")
    context = UpstreamTlsContext(
        common_tls_context=CommonTlsContext(
            validation_context=CertificateValidationContext(trusted_ca=trusted)
        ),
    )
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def authz_tls(spec: GatewaySpec) -> TransportSocket | None:
    """mTLS to authz's own listener (``authz serve --tls-cert``): the gateway
    presents its certificate and accepts only authz's SPIFFE ID, under the zone's CA."""
    if spec.authz_id is None:
        return None
    certificate = TlsCertificate(
        certificate_chain=DataSource(filename=spec.authz_certificate or spec.certificate),
        private_key=DataSource(filename=spec.authz_key or spec.key),
    )
    authz = SubjectAltNameMatcher(
        san_type=SubjectAltNameMatcherSanType.URI, matcher=StringMatcher(exact=spec.authz_id)
    )
    context = UpstreamTlsContext(
        common_tls_context=CommonTlsContext(
            tls_certificates=[certificate],
            alpn_protocols=["h2"],
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=spec.ca), match_typed_subject_alt_names=[authz]
            ),
        ),
    )
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def _dns_resolver(resolvers: tuple[str, ...]) -> TypedExtensionConfig:
    """c-ares asking only these servers (``use_resolvers_as_fallback: false``),
    with no search domains: a lab's own DNS server decides every answer."""
    config = CaresDnsResolverConfig(
        resolvers=[envoy_address(resolver) for resolver in resolvers],
        use_resolvers_as_fallback=False,
        dns_resolver_options=DnsResolverOptions(no_default_search_domain=True),
    )
    return TypedExtensionConfig(name="envoy.network.dns_resolver.cares", typed_config=pack(config))


def dns_cache(spec: GatewaySpec) -> DnsCacheConfig:
    """The forward proxy's one DNS cache: every filter and cluster must carry
    this same copy (Envoy refuses differing settings under one name). It
    drops the addresses the resolved-address guard forbids."""
    return DnsCacheConfig(
        name="egress_dns",
        dns_lookup_family=ClusterDnsLookupFamily.V4_PREFERRED,
        typed_dns_resolver_config=_dns_resolver(spec.dns_resolvers) if spec.dns_resolvers else None,
        resolved_address_filter=resolved_address_filter(spec.guard_exempt),
    )


def clusters(spec: GatewaySpec) -> tuple[list[Cluster], dict[str, str]]:
    """The authz cluster, the egress clusters, and which one each use takes."""
    http2 = HttpProtocolOptions(
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions()
        )
    )
    clusters = []
    if spec.ext_authz:
        clusters.append(
            _static_cluster(
                AUTHZ_CLUSTER,
                spec.authz,
                typed_extension_protocol_options={
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": pack(http2)
                },
                transport_socket=authz_tls(spec),
            )
        )
    grpc_clusters = {RATE_LIMIT_CLUSTER: spec.ratelimit_service, OTLP_CLUSTER: spec.otlp_collector}
    for name, target in grpc_clusters.items():
        if target is None:
            continue
        clusters.append(
            _static_cluster(
                name,
                target,
                typed_extension_protocol_options={
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": pack(http2)
                },
            )
        )
    if spec.upstream_tls is not None:
        plain = spec.upstream_http or spec.upstream_tls
        clusters += [
            _static_cluster("egress_tls", spec.upstream_tls, transport_socket=upstream_tls(spec)),
            _static_cluster("egress_http", plain),
            _static_cluster("tunnel_tls", spec.upstream_tls),
            _static_cluster("tunnel_http", plain),
        ]
        return clusters, {
            "tls": "egress_tls",
            "http": "egress_http",
            "tunnel_tls": "tunnel_tls",
            "tunnel_http": "tunnel_http",
        }

    def dynamic(name: str, **options: Any) -> Cluster:
        return Cluster(
            name=name,
            connect_timeout=datetime.timedelta(seconds=2),
            lb_policy=ClusterLbPolicy.CLUSTER_PROVIDED,
            cluster_type=ClusterCustomClusterType(
                name="envoy.clusters.dynamic_forward_proxy",
                typed_config=pack(ClusterConfig(dns_cache_config=dns_cache(spec))),
            ),
            **options,
        )

    # The SNI and the certificate name checked upstream are the destination's (the Host).
    by_host = HttpProtocolOptions(
        upstream_http_protocol_options=UpstreamHttpProtocolOptions(auto_sni=True, auto_san_validation=True),
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http_protocol_options=Http1ProtocolOptions()
        ),
    )
    clusters += [
        dynamic(
            "dfp_tls",
            transport_socket=upstream_tls(spec),
            typed_extension_protocol_options={
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": pack(by_host)
            },
        ),
        dynamic("dfp_plain"),
    ]
    return clusters, {
        "tls": "dfp_tls",
        "http": "dfp_plain",
        "tunnel_tls": "dfp_plain",
        "tunnel_http": "dfp_plain",
    }
