"""`authz lab certs` and `authz lab policies`: the demo material the compose services share."""

import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from authz.cli import main
from authz.gateway.demo import tour_identities
from authz.gateway.examples import EXAMPLES, days_since_examples, move_dates
from authz.gateway.lab import AUTHZ_ID, GATEWAY_ID
from authz.gateway.pki import issued_in
from authz.gateway.remote import RemoteGateway


def test_certs_issues_a_ca_the_gateway_upstreams_and_every_tour_svid(tmp_path: Path) -> None:
    assert (
        main(["lab", "certs", str(tmp_path), "--gateway-name", "envoy", "--upstream-name", "upstreams"]) == 0
    )
    gateway = x509.load_pem_x509_certificate((tmp_path / "gateway.pem").read_bytes())
    names = gateway.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "envoy" in names.get_values_for_type(x509.DNSName)
    upstream = x509.load_pem_x509_certificate((tmp_path / "upstream.pem").read_bytes())
    assert "upstreams" in upstream.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
    remote = RemoteGateway("127.0.0.1", {}, tmp_path)
    for identity in tour_identities():
        context = remote.client_context(identity)  # loads the SVID the tour presents
        assert isinstance(context, ssl.SSLContext)
        svid = x509.load_pem_x509_certificate(remote.svid(identity).certificate.read_bytes())
        uris = svid.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [identity]
    assert all(
        path.stat().st_mode & 0o004 for path in tmp_path.iterdir()
    )  # other containers' users read them


def _sans(path: Path) -> x509.SubjectAlternativeName:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def _usages(path: Path) -> set[x509.ObjectIdentifier]:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return set(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_certs_issues_authz_its_serving_svid_and_the_gateway_its_caller_svid(tmp_path: Path) -> None:
    """authz's own mTLS listener in the compose demo: authz serves an SVID for the name it is
    dialled by, the gateway calls it with an SVID of its own (authz's --allow-caller)."""
    assert main(["lab", "certs", str(tmp_path), "--authz-name", "authz"]) == 0
    served = issued_in(tmp_path, AUTHZ_ID)
    names = _sans(served.certificate)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [AUTHZ_ID]
    assert names.get_values_for_type(x509.DNSName) == ["authz"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in _usages(served.certificate)
    caller = issued_in(tmp_path, GATEWAY_ID)
    assert _sans(caller.certificate).get_values_for_type(x509.UniformResourceIdentifier) == [GATEWAY_ID]
    assert _usages(caller.certificate) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert served.key.exists()
    assert caller.key.exists()


def test_policies_writes_the_examples_moved_to_today_or_to_at(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the compose demo serves: its `policies` one-shot writes them into a volume."""
    assert main(["lab", "policies", str(tmp_path / "today")]) == 0
    days = days_since_examples()
    assert f"their dates moved {days} days from 2026-12-01" in capsys.readouterr().out
    written = (tmp_path / "today" / "payments-api.yaml").read_text()
    assert written == move_dates((EXAMPLES / "payments-api.yaml").read_text(), days)
    assert main(["lab", "policies", str(tmp_path / "ahead"), "--at", "2029-12-01T12:00:00Z"]) == 0
    assert "expires: 2029-12-05T18:00:00Z" in (tmp_path / "ahead" / "payments-api.yaml").read_text()
    assert main(["lab", "policies", str(tmp_path / "none"), "--from", str(tmp_path / "missing")]) == 2
    assert "no example policies in" in capsys.readouterr().err
