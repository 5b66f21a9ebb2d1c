"""What differs between one zone's gateway and another's: the input of
`authz envoy-config`."""

from __future__ import annotations

from dataclasses import dataclass, field

from authz.gateway.address_guard import IpAddress
from authz.gateway.ratelimit import Limit
from authz.gateway.rbac import Floor

__all__ = ["GatewaySpec"]


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    """What differs between one zone's gateway and another's."""

    zone: str
    authz: str  # "HOST:PORT" or "unix:/path"
    trust_domain: str = "prod.example.org"
    ca: str = "certs/ca.pem"  # the zone's trust bundle: workload SVIDs chain to it
    certificate: str = "certs/gateway.pem"
    key: str = "certs/gateway.key"
    bind: str = "0.0.0.0"
    http_port: int = 10080
    sni_port: int = 10443
    sni_destination_port: int = (
        443  # where the SNI listener's forward proxy connects (authz serve --sni-port)
    )
    connect_port: int = 10081
    admin_port: int | None = 9901
    authz_timeout_ms: int = 250
    # authz's SPIFFE ID: the gateway then calls authz over mTLS, checks that ID and
    # presents authz_certificate/authz_key (default: certificate/key; authz's --allow-caller)
    authz_id: str | None = None
    authz_certificate: str | None = None
    authz_key: str | None = None
    status_on_error: int = 503
    upstream_tls: str | None = None  # "HOST:PORT": all TLS egress goes here (demo, tests)
    upstream_http: str | None = None  # "HOST:PORT": all plain egress goes here (demo, tests)
    upstream_ca: str | None = None  # trust for upstream TLS; default: the system's
    access_log: str = "/dev/stdout"
    rate_limits: tuple[Limit, ...] = field(default=())  # from the policies' rate_limit: local buckets
    max_rate_limited_identities: int = 1000  # identities remembered per rule by the local limit
    ratelimit_service: str | None = None  # "HOST:PORT" of envoyproxy/ratelimit: global buckets
    otlp_collector: str | None = None  # "HOST:PORT" of an OTLP/gRPC collector: Envoy's own spans
    ext_authz: bool = True  # False: no ext_authz filter (the RBAC floor alone, or nothing: benchmarks)
    rbac: Floor | None = None  # Envoy's RBAC filters from the policies, before ext_authz
    guard_exempt: tuple[IpAddress, ...] = ()  # exact addresses policy names: the address guard lets them by
    dns_resolvers: tuple[str, ...] = ()  # "HOST:PORT": the forward proxy asks only these (a lab's DNS server)
    direct_response: bool = False  # the HTTP listener answers 200 itself: benchmarks, no upstream cost
