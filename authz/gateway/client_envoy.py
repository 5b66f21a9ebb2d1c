"""A workload's side of the gateway: an Envoy with plaintext HTTP/2 listeners
whose clusters reach the gateway's HTTP listener over mTLS with the
workload's SVID, as a sidecar would.

Load generators (h2load) cannot present a client certificate, and the
gateway's listeners require one; through this Envoy every request reaches the
gateway with the workload's SPIFFE ID as the peer, at the same fixed cost
whatever the gateway does. A path under ``/deny/`` names ``denied_host``
instead of ``host``, to check that the gateway's authorization is there.

envoy-data-plane's modules take over a second to import: imported only by
the benchmarks and tests that start this Envoy.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import yaml
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from envoy_data_plane.envoy.config.core.v3 import DataSource, Http2ProtocolOptions, TransportSocket
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.route.v3 import (
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpFilter,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    TlsCertificate,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)

from authz.gateway.envoy_clusters import envoy_address, pack

__all__ = ["ClientSide", "Tunnel", "render"]


@dataclass(frozen=True, slots=True)
class Tunnel:
    """Plaintext HTTP/2 on ``listen`` ("127.0.0.1:PORT") to the gateway's
    HTTP listener at ``gateway`` ("127.0.0.1:PORT"), over mTLS."""

    name: str
    listen: str
    gateway: str


@dataclass(frozen=True, slots=True)
class ClientSide:
    certificate: str  # the workload's SVID (PEM)
    key: str
    ca: str  # trusts the gateway's certificate
    tunnels: tuple[Tunnel, ...]
    # The authority each request names, with its port: over HTTP/2 the gateway keeps the
    # client's :scheme (http, plaintext here), which would make a port-less authority port 80.
    host: str = "registry.npmjs.org:443"
    denied_host: str = "pastebin.com:443"  # named instead under /deny/
    admin_port: int | None = None


def _cluster(side: ClientSide, tunnel: Tunnel) -> Cluster:
    mtls = UpstreamTlsContext(
        common_tls_context=CommonTlsContext(
            tls_certificates=[
                TlsCertificate(
                    certificate_chain=DataSource(filename=side.certificate),
                    private_key=DataSource(filename=side.key),
                )
            ],
            validation_context=CertificateValidationContext(trusted_ca=DataSource(filename=side.ca)),
        )
    )
    http2 = HttpProtocolOptions(
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions()
        )
    )
    endpoint = LbEndpoint(endpoint=Endpoint(address=envoy_address(tunnel.gateway)))
    return Cluster(
        name=tunnel.name,
        type=ClusterDiscoveryType.STATIC,
        connect_timeout=datetime.timedelta(seconds=2),
        load_assignment=ClusterLoadAssignment(
            cluster_name=tunnel.name, endpoints=[LocalityLbEndpoints(lb_endpoints=[endpoint])]
        ),
        transport_socket=TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(mtls)),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": pack(http2)
        },
    )


def _listener(side: ClientSide, tunnel: Tunnel) -> Listener:
    def to(host: str, prefix: str) -> Route:
        action = RouteAction(
            cluster=tunnel.name, host_rewrite_literal=host, timeout=datetime.timedelta(seconds=15)
        )
        return Route(match=RouteMatch(prefix=prefix), route=action)

    manager = HttpConnectionManager(
        stat_prefix=tunnel.name,
        codec_type=HttpConnectionManagerCodecType.AUTO,
        route_config=RouteConfiguration(
            name=tunnel.name,
            virtual_hosts=[
                VirtualHost(
                    name=tunnel.name,
                    domains=["*"],
                    routes=[to(side.denied_host, "/deny/"), to(side.host, "/")],
                )
            ],
        ),
        http_filters=[HttpFilter(name="envoy.filters.http.router", typed_config=pack(Router()))],
    )
    return Listener(
        name=tunnel.name,
        address=envoy_address(tunnel.listen),
        filter_chains=[
            FilterChain(
                filters=[
                    Filter(name="envoy.filters.network.http_connection_manager", typed_config=pack(manager))
                ]
            )
        ],
    )


def render(side: ClientSide) -> str:
    """The client-side Envoy's bootstrap as YAML."""
    admin = None
    if side.admin_port is not None:
        admin = Admin(address=envoy_address(f"127.0.0.1:{side.admin_port}"))
    tunnels: Sequence[Tunnel] = side.tunnels
    bootstrap = Bootstrap(
        static_resources=BootstrapStaticResources(
            listeners=[_listener(side, tunnel) for tunnel in tunnels],
            clusters=[_cluster(side, tunnel) for tunnel in tunnels],
        ),
        admin=admin,
    )
    header = "# A workload's side of the egress gateway (plaintext HTTP/2 in, mTLS with its SVID out).\n"
    return header + yaml.safe_dump(bootstrap.to_dict(), sort_keys=False, width=120)
