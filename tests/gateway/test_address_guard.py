"""The resolved-address guard's ranges: the forbidden ranges less exactly the
exempt addresses, and the exemptions read from policy."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.cli import main
from authz.gateway import address_guard
from authz.gateway.address_guard import IpAddress
from authz.gateway.envoy_config import GatewaySpec, render
from authz.policy import load_paths

FORBIDDEN = address_guard.forbidden_networks()
GUARD_ON_NOTHING_EXEMPT = address_guard.guarded_networks(())


def _denied(address: IpAddress, networks: list[Any]) -> bool:
    return any(address in network for network in networks)


def _forbidden_address() -> st.SearchStrategy[IpAddress]:
    return st.sampled_from(FORBIDDEN).flatmap(lambda network: st.ip_addresses(network=network))


def _exempt(address: IpAddress) -> set[IpAddress]:
    """An exemption and its IPv4-mapped spelling."""
    if isinstance(address, ipaddress.IPv4Address):
        return {address, ipaddress.IPv6Address(f"::ffff:{address}")}
    return {address}


@settings(max_examples=60, deadline=None)
@given(
    exempt=st.lists(st.one_of(_forbidden_address(), st.ip_addresses()), max_size=6),
    probes=st.lists(st.one_of(_forbidden_address(), st.ip_addresses()), min_size=1, max_size=40),
)
def test_the_guard_denies_exactly_the_forbidden_addresses_less_the_exemptions(
    exempt: list[IpAddress], probes: list[IpAddress]
) -> None:
    guarded = address_guard.guarded_networks(exempt)
    allowed = set().union(*map(_exempt, exempt)) if exempt else set()
    for address in [*probes, *allowed]:
        expected = _denied(address, FORBIDDEN) and address not in allowed
        assert _denied(address, guarded) is expected, (address, exempt)


@settings(max_examples=30, deadline=None)
@given(exempt=st.lists(_forbidden_address(), min_size=1, max_size=6))
def test_every_exemption_survives_and_its_neighbours_do_not(exempt: list[IpAddress]) -> None:
    guarded = address_guard.guarded_networks(exempt)
    allowed = set().union(*map(_exempt, exempt))
    for address in allowed:
        assert not _denied(address, guarded)
        for delta in (-1, 1):
            try:
                neighbour = address + delta
            except ipaddress.AddressValueError:
                continue  # past the end of the address space
            if _denied(neighbour, FORBIDDEN) and neighbour not in allowed:
                assert _denied(neighbour, guarded), (neighbour, exempt)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "169.254.169.254", "fd00:ec2::254", "10.1.2.3", "172.31.255.255", "192.168.0.1",
     "100.100.100.200", "168.63.129.16", "192.0.0.192", "198.19.0.1", "224.0.0.1", "255.255.255.255",
     "0.0.0.0", "::", "::1", "::ffff:127.0.0.1", "::ffff:8.8.8.8", "64:ff9b::a9fe:a9fe", "fe80::1",
     "fc00::1", "fec0::1", "ff02::1"],
)  # fmt: skip
def test_the_forbidden_ranges_hold(address: str) -> None:
    assert _denied(ipaddress.ip_address(address), GUARD_ON_NOTHING_EXEMPT)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "2606:4700::1111", "64:ff9b::808:808"]
)
def test_public_addresses_and_nat64_to_them_pass(address: str) -> None:
    assert not _denied(ipaddress.ip_address(address), GUARD_ON_NOTHING_EXEMPT)


POLICY = """\
apiVersion: egress-authz/v1
kind: EgressPolicy
metadata: {name: internal, owner: team-a}
spec:
  identities: [spiffe://prod.example.org/ns/a/sa/a]
  egress:
    - {id: by-address, hosts: [10.1.2.3, "10.9.9.9/32", "[::ffff:192.168.1.1]", api.example.com], ports: [443]}
    - {id: block, hosts: [10.20.0.0/16, 203.0.113.0/24], ports: [443]}
  exceptions:
    - id: break-glass
      hosts: [169.254.169.254]
      ports: [80]
      owner: team-a
      reason: incident
      ticket: INC-1
      expires: 2030-01-01T00:00:00Z
---
apiVersion: egress-authz/v1
kind: EgressPolicy
metadata: {name: trial, owner: team-b}
spec:
  identities: [spiffe://prod.example.org/ns/b/sa/b]
  mode: dry-run
  egress:
    - {id: db, hosts: ["fd00::5"], ports: [5432]}
"""


def test_exemptions_are_the_exact_addresses_policy_names(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    found = address_guard.exemptions_from(load_paths([tmp_path]))
    assert [str(a) for a in found.addresses] == [
        "10.1.2.3", "10.9.9.9", "169.254.169.254", "192.168.1.1", "fd00::5",
    ]  # fmt: skip
    assert found.blocks == ("internal:block 10.20.0.0/16",)  # a public block is no concern of the guard


def _dns_caches(document: Any) -> list[dict[str, Any]]:
    """Every dnsCacheConfig in the rendered bootstrap."""
    found: list[dict[str, Any]] = []
    if isinstance(document, dict):
        for key, value in document.items():
            found += [value] if key == "dnsCacheConfig" else _dns_caches(value)
    elif isinstance(document, list):
        for item in document:
            found += _dns_caches(item)
    return found


def test_every_copy_of_the_dns_cache_carries_the_guard_and_the_resolver() -> None:
    exempt = (ipaddress.ip_address("127.0.0.2"),)
    spec = GatewaySpec(
        zone="z", authz="127.0.0.1:9191", guard_exempt=exempt, dns_resolvers=("127.0.0.1:5353",)
    )
    caches = _dns_caches(yaml.safe_load(render(spec)))
    assert len(caches) == 5  # the HTTP and CONNECT filters, the SNI filter, the two clusters
    assert all(cache == caches[0] for cache in caches)  # Envoy refuses differing copies
    ranges = caches[0]["resolvedAddressFilter"]["ranges"]
    networks = [ipaddress.ip_network(f"{r['addressPrefix']}/{r['prefixLen']}") for r in ranges]
    assert networks == address_guard.guarded_networks(exempt)
    resolver = caches[0]["typedDnsResolverConfig"]["typedConfig"]
    assert resolver["resolvers"] == [{"socketAddress": {"address": "127.0.0.1", "portValue": 5353}}]
    assert resolver.get("useResolversAsFallback", False) is False  # only these servers, never the system's


def test_fixed_upstreams_have_no_dns_cache_and_say_so() -> None:
    spec = GatewaySpec(zone="z", authz="127.0.0.1:9191", upstream_tls="127.0.0.1:8443")
    text = render(spec)
    assert _dns_caches(yaml.safe_load(text)) == []
    assert "no resolved-address guard" in text


def _listener_filters(document: dict[str, Any], name: str) -> list[dict[str, Any]]:
    (listener,) = [item for item in document["staticResources"]["listeners"] if item["name"] == name]
    filters: list[dict[str, Any]] = listener["filterChains"][0]["filters"]
    return filters


def test_the_sni_listener_denies_a_connection_left_without_an_address() -> None:
    document = yaml.safe_load(
        render(GatewaySpec(zone="z", authz="127.0.0.1:9191", sni_destination_port=8443))
    )
    names = [f["name"] for f in _listener_filters(document, "sni_egress")]
    assert names == [
        "envoy.filters.network.ext_authz",
        "envoy.filters.network.sni_dynamic_forward_proxy",
        "envoy.filters.network.rbac",  # after the forward proxy: it reads the address it saved
        "envoy.filters.network.set_filter_state",
        "envoy.filters.network.tcp_proxy",
    ]
    dfp, guard = (f["typedConfig"] for f in _listener_filters(document, "sni_egress")[1:3])
    assert (dfp["portValue"], dfp["saveUpstreamAddress"]) == (8443, True)
    assert guard["rules"]["action"] == "DENY"
    assert list(guard["rules"]["policies"]) == [address_guard.SNI_GUARD_POLICY]


def test_http_and_connect_turn_the_denial_into_a_403_only_in_forward_proxy_mode() -> None:
    for spec, mapped in (
        (GatewaySpec(zone="z", authz="127.0.0.1:9191"), True),
        (GatewaySpec(zone="z", authz="127.0.0.1:9191", upstream_tls="127.0.0.1:8443"), False),
    ):
        document = yaml.safe_load(render(spec))
        for listener in ("http_egress", "connect_proxy"):
            (manager,) = _listener_filters(document, listener)
            mappers = manager["typedConfig"].get("localReplyConfig", {}).get("mappers", [])
            assert [m["statusCode"] for m in mappers] == ([403] if mapped else [])
            if mapped:
                assert address_guard.ADDRESS_DENIED in str(mappers[0]["filter"])


def test_envoy_config_takes_exemptions_from_policy_and_names_the_blocks_it_does_not_exempt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    output = tmp_path / "envoy.yaml"
    assert main(["envoy-config", "--zone", "z", "--authz", "127.0.0.1:9191", "--policy", str(tmp_path),
                 "--dns-resolver", "[::1]:5353", "-o", str(output)]) == 0  # fmt: skip
    assert "internal:block 10.20.0.0/16 is not exempt" in capsys.readouterr().err
    text = output.read_text()
    assert "exempt, as policy names them: 10.1.2.3, 10.9.9.9, 169.254.169.254, 192.168.1.1, fd00::5" in text
    (cache,) = {json.dumps(c, sort_keys=True) for c in _dns_caches(yaml.safe_load(text))}
    resolvers = json.loads(cache)["typedDnsResolverConfig"]["typedConfig"]["resolvers"]
    assert resolvers == [{"socketAddress": {"address": "::1", "portValue": 5353}}]


@pytest.mark.parametrize("resolver", ["dns.example.com:53", "127.0.0.1", "127.0.0.1:99999"])
def test_a_dns_resolver_is_an_ip_address_and_port(resolver: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["envoy-config", "--zone", "z", "--authz", "127.0.0.1:9191", "--dns-resolver", resolver])
    assert exited.value.code == 2
    assert "--dns-resolver" in capsys.readouterr().err
