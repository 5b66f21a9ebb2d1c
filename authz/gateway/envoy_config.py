"""The zone egress gateway's Envoy configuration, built from Envoy's typed
config classes (envoy-data-plane), so that a wrong field is a Python error
before Envoy ever sees it.

Three mTLS listeners, each asking authz over gRPC (``envoy_grpc``, explicit
timeout, ``failure_mode_allow: false``, ``status_on_error`` 503 so an outage
is not mistaken for a deny):

1. HTTP egress: the HTTP ext_authz filter (peer certificate and TLS session
   included, the zone in ``context_extensions``), routes by Host.
2. TLS by SNI: the network ext_authz filter, then ``tcp_proxy`` to the
   destination the SNI names, sending that SNI and accepting only a
   certificate for that name; a deny closes the connection.
3. Explicit proxy: HTTP CONNECT (and absolute-form requests) over mTLS.

Upstreams: by default Envoy's dynamic forward proxy resolves each
destination, and its DNS cache drops the addresses the resolved-address
guard forbids (``authz.gateway.address_guard``); ``upstream_tls``/
``upstream_http`` instead send all egress to fixed addresses (the local demo
and tests): no DNS cache, so no guard either.

With ``rbac`` (``--rbac``), Envoy's RBAC filters from the policies come
before each ext_authz: a static floor that denies without an RPC what no
rule could admit (``authz.gateway.rbac``). Without ``ext_authz``
(``--no-ext-authz``) the floor alone decides (Istio's ALLOW policies do the
same), or nothing does (a benchmark's baseline).

envoy-data-plane's modules take over a second to import: this module is
imported only by ``authz envoy-config``.
"""

from __future__ import annotations

import datetime

import yaml
from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.core.v3 import (
    ApiVersion,
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    SubstitutionFormatString,
    TransportSocket,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener, ListenerFilter
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    Route,
    RouteAction,
    RouteActionUpgradeConfig,
    RouteActionUpgradeConfigConnectConfig,
    RouteConfiguration,
    RouteMatch,
    RouteMatchConnectMatcher,
    VirtualHost,
)
from envoy_data_plane.envoy.config.trace.v3 import OpenTelemetryConfig, TracingHttp
from envoy_data_plane.envoy.extensions.access_loggers.file.v3 import FileAccessLog
from envoy_data_plane.envoy.extensions.filters.common.set_filter_state.v3 import FilterStateValue
from envoy_data_plane.envoy.extensions.filters.http.dynamic_forward_proxy.v3 import (
    FilterConfig as HttpDynamicForwardProxy,
)
from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import CheckSettings, ExtAuthzPerRoute
from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import ExtAuthz as HttpExtAuthz
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.listener.tls_inspector.v3 import TlsInspector
from envoy_data_plane.envoy.extensions.filters.network.ext_authz.v3 import ExtAuthz as NetworkExtAuthz
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpConnectionManagerTracing,
    HttpConnectionManagerUpgradeConfig,
    HttpFilter,
)
from envoy_data_plane.envoy.extensions.filters.network.set_filter_state.v3 import Config as SetFilterState
from envoy_data_plane.envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3 import (
    FilterConfig as SniDynamicForwardProxy,
)
from envoy_data_plane.envoy.extensions.filters.network.tcp_proxy.v3 import TcpProxy, UpstreamConnectMode
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    DownstreamTlsContext,
    SubjectAltNameMatcher,
    SubjectAltNameMatcherSanType,
    TlsCertificate,
)
from envoy_data_plane.envoy.type.matcher.v3 import StringMatcher
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.protobuf import Any as AnyMessage
from envoy_data_plane.google.protobuf import Struct

from authz.ext_authz.response import RATE_LIMIT_HEADERS
from authz.gateway import address_guard, ratelimit, rbac
from authz.gateway.envoy_clusters import AUTHZ_CLUSTER, OTLP_CLUSTER, clusters, dns_cache, envoy_address, pack
from authz.gateway.envoy_spec import GatewaySpec

__all__ = ["GatewaySpec", "render"]

HTTP_EXT_AUTHZ = "envoy.filters.http.ext_authz"
NETWORK_EXT_AUTHZ = "envoy.filters.network.ext_authz"
EARLY_DATA_BYTES = 65536  # what the SNI listener buffers from the client before the destination is dialled
#: What Envoy's upstream TLS reads from a connection's filter state: the SNI it
#: sends, and the names the destination's certificate must carry.
UPSTREAM_NAME_KEYS = ("envoy.network.upstream_server_name", "envoy.network.upstream_subject_alt_names")


def _downstream_mtls(spec: GatewaySpec) -> TransportSocket:
    """Workloads must present an SVID of this trust domain, chained to the zone CA."""
    context = DownstreamTlsContext(
        require_client_certificate=True,
        common_tls_context=CommonTlsContext(
            tls_certificates=[
                TlsCertificate(
                    certificate_chain=DataSource(filename=spec.certificate),
                    private_key=DataSource(filename=spec.key),
                )
            ],
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=spec.ca),
                match_typed_subject_alt_names=[
                    SubjectAltNameMatcher(
                        san_type=SubjectAltNameMatcherSanType.URI,
                        matcher=StringMatcher(prefix=f"spiffe://{spec.trust_domain}/"),
                    )
                ],
            ),
        ),
    )
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def _grpc_service(spec: GatewaySpec) -> GrpcService:
    return GrpcService(
        envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=AUTHZ_CLUSTER),
        timeout=datetime.timedelta(milliseconds=spec.authz_timeout_ms),
    )


def _access_log(spec: GatewaySpec, listener: str, namespace: str, *, http: bool) -> list[AccessLog]:
    """One JSON line per request, connection (SNI) or tunnel (CONNECT), written as it ends, with the
    decision's metadata and the bytes moved (``authz inventory --access-log`` joins it by decision id)."""
    fields = {
        "time": "%START_TIME%",
        "listener": listener,
        "peer": "%DOWNSTREAM_PEER_URI_SAN%",
        "sni": "%REQUESTED_SERVER_NAME%",
        "upstream": "%UPSTREAM_HOST%",
        "upstream_failure": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",  # why TLS upstream failed: verify_SAN...
        "flags": "%RESPONSE_FLAGS%",
        # Bytes to and from the destination (0 when nothing went: a deny) and to and from the workload, as
        # the HTTP codec or the TCP proxy handled them (after TLS): a request's headers and body (HTTP), the
        # connection's or the tunnel's totals (SNI, CONNECT). Not %BYTES_RECEIVED%: on HTTP it is the body
        # alone, and tcp_proxy counts again what it held back before dialling (Envoy 1.40: 1 MiB more on 5 MB).
        "upstream_bytes_sent": "%UPSTREAM_WIRE_BYTES_SENT%",
        "upstream_bytes_received": "%UPSTREAM_WIRE_BYTES_RECEIVED%",
        "downstream_bytes_received": "%DOWNSTREAM_WIRE_BYTES_RECEIVED%",
        "downstream_bytes_sent": "%DOWNSTREAM_WIRE_BYTES_SENT%",
        "duration_ms": "%DURATION%",
        # Who refused: ext_authz_denied, rbac_access_denied_matched_policy[none], ...
        "details": "%RESPONSE_CODE_DETAILS%" if http else "%CONNECTION_TERMINATION_DETAILS%",
        **{key: f"%DYNAMIC_METADATA({namespace}:{key})%" for key in
           ("decision_id", "verdict", "reason", "dry_run_reason", "rule", "policy", "would_deny", "identity",
            "destination")},
    }  # fmt: skip
    if http:
        fields |= {"method": "%REQ(:METHOD)%", "authority": "%REQ(:AUTHORITY)%", "status": "%RESPONSE_CODE%"}
    log_format = SubstitutionFormatString(json_format=Struct.from_dict(fields))
    return [
        AccessLog(
            name="envoy.access_loggers.file",
            typed_config=pack(FileAccessLog(path=spec.access_log, log_format=log_format)),
        )
    ]


def _http_ext_authz(spec: GatewaySpec) -> HttpFilter:
    config = HttpExtAuthz(
        grpc_service=_grpc_service(spec),
        transport_api_version=ApiVersion.V3,
        failure_mode_allow=False,
        status_on_error=HttpStatus(code=StatusCode(spec.status_on_error)),
        include_peer_certificate=True,
        include_tls_session=True,
    )
    return HttpFilter(name=HTTP_EXT_AUTHZ, typed_config=pack(config))


def _zone_settings(spec: GatewaySpec) -> dict[str, AnyMessage]:
    if not spec.ext_authz:
        return {}
    per_route = ExtAuthzPerRoute(check_settings=CheckSettings(context_extensions={"zone": spec.zone}))
    return {HTTP_EXT_AUTHZ: pack(per_route)}


def _http_filters(spec: GatewaySpec, listener_port: int) -> list[HttpFilter]:
    """The RBAC floor, then ext_authz; the rate limits after it, on the
    identity, policy and rule it sets (without ext_authz nobody sets them:
    no rate limits); then the forward proxy and the router."""
    filters = []
    if spec.rbac is not None:
        name, config = rbac.http_filter(spec.rbac, listener_port)
        filters.append(HttpFilter(name=name, typed_config=config))
    if spec.ext_authz:
        filters.append(_http_ext_authz(spec))
    if spec.ext_authz and spec.rate_limits:
        name, config = ratelimit.local_filter(spec.rate_limits, spec.max_rate_limited_identities)
        filters.append(HttpFilter(name=name, typed_config=config))
    if spec.ext_authz and spec.ratelimit_service is not None:
        name, config = ratelimit.global_filter()
        filters.append(HttpFilter(name=name, typed_config=config))
    if spec.upstream_tls is None:
        dfp = HttpDynamicForwardProxy(dns_cache_config=dns_cache(spec))
        filters.append(HttpFilter(name="envoy.filters.http.dynamic_forward_proxy", typed_config=pack(dfp)))
    filters.append(HttpFilter(name="envoy.filters.http.router", typed_config=pack(Router())))
    return filters


def _hcm(
    spec: GatewaySpec, name: str, port: int, virtual_hosts: list[VirtualHost], *, connect: bool
) -> Filter:
    manager = HttpConnectionManager(
        stat_prefix=name,
        codec_type=HttpConnectionManagerCodecType.AUTO,
        route_config=RouteConfiguration(name=name, virtual_hosts=virtual_hosts),
        http_filters=_http_filters(spec, port),
        access_log=_access_log(spec, name, HTTP_EXT_AUTHZ, http=True),
        upgrade_configs=[HttpConnectionManagerUpgradeConfig(upgrade_type="CONNECT")] if connect else [],
        tracing=_tracing(spec),
        local_reply_config=address_guard.address_denied_reply() if spec.upstream_tls is None else None,
    )
    return Filter(name="envoy.filters.network.http_connection_manager", typed_config=pack(manager))


def _tracing(spec: GatewaySpec) -> HttpConnectionManagerTracing | None:
    """Envoy's own span for each request, exported over OTLP: it continues the
    caller's trace, so authz's decision span and Envoy's land in one trace."""
    if spec.otlp_collector is None:
        return None
    provider = OpenTelemetryConfig(
        grpc_service=GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=OTLP_CLUSTER)),
        service_name="egress-gateway",
    )
    return HttpConnectionManagerTracing(
        provider=TracingHttp(name="envoy.tracers.opentelemetry", typed_config=pack(provider))
    )


def _listener(spec: GatewaySpec, name: str, port: int, filters: list[Filter]) -> Listener:
    return Listener(
        name=name,
        address=envoy_address(f"{spec.bind}:{port}"),
        listener_filters=[
            ListenerFilter(name="envoy.filters.listener.tls_inspector", typed_config=pack(TlsInspector()))
        ],
        filter_chains=[FilterChain(filters=filters, transport_socket=_downstream_mtls(spec))],
    )


def _http_listener(spec: GatewaySpec, cluster: str) -> Listener:
    if spec.direct_response:  # a benchmark's gateway: authorization and nothing after it
        route = Route(
            match=RouteMatch(prefix="/"),
            direct_response=DirectResponseAction(status=200, body=DataSource(inline_string="ok\n")),
        )
    else:
        route = Route(
            match=RouteMatch(prefix="/"),
            route=RouteAction(cluster=cluster, timeout=datetime.timedelta(seconds=30)),
        )
    host = _virtual_host(spec, "egress", ["*"], [route])
    manager = _hcm(spec, "http_egress", spec.http_port, [host], connect=False)
    return _listener(spec, "http_egress", spec.http_port, [manager])


def _virtual_host(spec: GatewaySpec, name: str, domains: list[str], routes: list[Route]) -> VirtualHost:
    """The zone for authz; the rate limit headers authz sets are stripped
    before the request leaves (an external destination learns no SPIFFE ID)."""
    return VirtualHost(
        name=name,
        domains=domains,
        routes=routes,
        typed_per_filter_config=_zone_settings(spec),
        request_headers_to_remove=list(RATE_LIMIT_HEADERS),
        rate_limits=ratelimit.route_rate_limits() if spec.ratelimit_service is not None else [],
    )


def _sni_listener(spec: GatewaySpec, cluster: str) -> Listener:
    authz = NetworkExtAuthz(
        stat_prefix="sni_egress",
        grpc_service=_grpc_service(spec),
        transport_api_version=ApiVersion.V3,
        failure_mode_allow=False,
        include_peer_certificate=True,
        include_tls_session=True,
    )
    filters = []
    if spec.rbac is not None:
        name, config = rbac.network_filter(spec.rbac, spec.sni_port, spec.sni_destination_port)
        filters.append(Filter(name=name, typed_config=config))
    if spec.ext_authz:
        filters.append(Filter(name=NETWORK_EXT_AUTHZ, typed_config=pack(authz)))
    if spec.upstream_tls is None:
        dfp = SniDynamicForwardProxy(
            dns_cache_config=dns_cache(spec), port_value=spec.sni_destination_port, save_upstream_address=True
        )
        filters.append(Filter(name="envoy.filters.network.sni_dynamic_forward_proxy", typed_config=pack(dfp)))
        name, config = address_guard.sni_guard_filter()
        filters.append(Filter(name=name, typed_config=config))
    filters.append(_upstream_names())
    proxy = TcpProxy(
        stat_prefix="sni_egress",
        cluster=cluster,
        access_log=_access_log(spec, "sni_egress", NETWORK_EXT_AUTHZ, http=False),
        # Dial the destination on the client's first bytes, once ext_authz and the
        # RBAC filters (which decide on those bytes) have let them through; by
        # default tcp_proxy connects as the connection is accepted, before any decision.
        upstream_connect_mode=UpstreamConnectMode.ON_DOWNSTREAM_DATA,
        max_early_data_bytes=EARLY_DATA_BYTES,
    )
    filters.append(Filter(name="envoy.filters.network.tcp_proxy", typed_config=pack(proxy)))
    return _listener(spec, "sni_egress", spec.sni_port, filters)


def _upstream_names() -> Filter:
    """The SNI listener's TLS to the destination sends the client's SNI (the
    name authz decided on) and accepts only a certificate for that name.
    ``auto_sni``/``auto_san_validation`` read an HTTP Host: tcp_proxy has none,
    and without this any certificate the trust bundle vouches for would do,
    with no SNI sent. No SNI formats as ``-``, which no certificate names; an
    SNI that is no host name (a comma would split the names) Envoy has
    already rewritten as ``invalid:...``."""
    sni = SubstitutionFormatString(text_format_source=DataSource(inline_string="%REQUESTED_SERVER_NAME%"))
    config = SetFilterState(
        on_new_connection=[FilterStateValue(object_key=key, format_string=sni) for key in UPSTREAM_NAME_KEYS]
    )
    return Filter(name="envoy.filters.network.set_filter_state", typed_config=pack(config))


def _connect_listener(spec: GatewaySpec, tunnel_tls: str, tunnel_http: str, plain: str) -> Listener:
    def tunnel(domains: list[str], cluster: str) -> VirtualHost:
        route = Route(
            match=RouteMatch(connect_matcher=RouteMatchConnectMatcher()),
            route=RouteAction(
                cluster=cluster,
                upgrade_configs=[
                    RouteActionUpgradeConfig(
                        upgrade_type="CONNECT", connect_config=RouteActionUpgradeConfigConnectConfig()
                    )
                ],
            ),
        )
        absolute = Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster=plain))
        return _virtual_host(spec, f"proxy_{cluster}", domains, [route, absolute])

    hosts = (
        [tunnel(["*:80"], tunnel_http), tunnel(["*"], tunnel_tls)]
        if tunnel_http != tunnel_tls
        else [tunnel(["*"], tunnel_tls)]
    )
    manager = _hcm(spec, "connect_proxy", spec.connect_port, hosts, connect=True)
    return _listener(spec, "connect_proxy", spec.connect_port, [manager])


def build(spec: GatewaySpec) -> Bootstrap:
    all_clusters, use = clusters(spec)
    listeners = [
        _http_listener(spec, use["tls"]),
        _sni_listener(spec, use["tls"]),
        _connect_listener(spec, use["tunnel_tls"], use["tunnel_http"], use["http"]),
    ]
    admin = None
    if spec.admin_port is not None:
        admin = Admin(address=envoy_address(f"127.0.0.1:{spec.admin_port}"))
    return Bootstrap(
        node=None,
        static_resources=BootstrapStaticResources(listeners=listeners, clusters=all_clusters),
        admin=admin,
    )


def render(spec: GatewaySpec) -> str:
    """The bootstrap as YAML, with a header saying how it was made."""
    document = build(spec).to_dict()
    authz = spec.authz if spec.ext_authz else "none (no ext_authz)"
    header = (
        "# Zone egress gateway for egress-authz, rendered by `authz envoy-config`; do not edit by hand.\n"
        f"# zone: {spec.zone}; authz: {authz}; trust domain: {spec.trust_domain}\n"
    )
    if spec.upstream_tls is None:
        exempt = ", ".join(map(str, spec.guard_exempt)) or "none"
        header += (
            "# Resolved-address guard: the forward proxy's DNS cache drops loopback, link-local, private\n"
            f"# and other internal addresses (authz.gateway.address_guard); exempt, as policy names them: {exempt}\n"
        )
    else:
        header += (
            "# Fixed upstreams (--upstream-tls/--upstream-http): no DNS cache, no resolved-address guard\n"
        )
    if spec.rbac is not None:
        header += (
            "# RBAC floor: Envoy's RBAC filters from the policies deny, before any ext_authz, what no\n"
            "# rule could admit. Not in the floor (RBAC cannot express it; authz enforces it):\n"
            + "".join(f"#  - {line}\n" for line in rbac.NOT_IN_FLOOR)
        )
    return header + yaml.safe_dump(document, sort_keys=False, width=120)
