"""Our wire subset against Envoy's full schema (envoy-data-plane): the guard
against a wrong field number. And the generated code against protos/."""

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    HeaderMap,
    HeaderValue,
    Metadata,
    Pipe,
    SocketAddress,
)
from envoy_data_plane.envoy.service.auth.v3 import (
    AttributeContext,
    AttributeContextHttpRequest,
    AttributeContextPeer,
    AttributeContextRequest,
    AttributeContextTlsSession,
    CheckRequest,
)
from envoy_data_plane.google.protobuf import Struct

from authz.ext_authz.wire import ext_authz_pb2 as ours
from tests.paths import ROOT


def _full_request() -> CheckRequest:
    """Every field Envoy's HTTP filter fills, including those our subset drops."""
    return CheckRequest(
        attributes=AttributeContext(
            source=AttributeContextPeer(
                address=Address(socket_address=SocketAddress(address="10.1.2.3", port_value=51234)),
                service="ci-runner",
                labels={"app": "ci"},
                principal="spiffe://prod.example.org/ns/ci/sa/ci-runner",
                certificate="-----BEGIN%20CERTIFICATE-----%0A",
            ),
            destination=AttributeContextPeer(
                address=Address(socket_address=SocketAddress(address="127.0.0.1", port_value=10443)),
                principal="spiffe://prod.example.org/ns/egress/sa/gateway",
            ),
            request=AttributeContextRequest(
                time=datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC),
                http=AttributeContextHttpRequest(
                    id="1234",
                    method="POST",
                    headers={":authority": "bank-gateway.example.com", "traceparent": "00-ab-cd-01"},
                    header_map=HeaderMap(headers=[HeaderValue(key="x-raw", raw_value=b"raw")]),
                    path="/v1/payments/1?x=1",
                    host="bank-gateway.example.com",
                    scheme="https",
                    query="x=1",
                    fragment="f",
                    size=12,
                    protocol="HTTP/2",
                    body="{}",
                    raw_body=b"{}",
                ),
            ),
            context_extensions={"zone": "eu-west-prod"},
            metadata_context=Metadata(filter_metadata={"ns": Struct(fields={})}),
            tls_session=AttributeContextTlsSession(sni="bank-gateway.example.com"),
            route_metadata_context=Metadata(),
        )
    )


def test_every_field_we_read_decodes_as_envoy_wrote_it() -> None:
    full = _full_request()
    decoded = ours.CheckRequest.FromString(bytes(full))
    attributes, theirs = decoded.attributes, full.attributes
    assert theirs is not None
    assert theirs.source is not None
    assert theirs.request is not None
    assert attributes.source.principal == theirs.source.principal
    assert attributes.source.certificate == theirs.source.certificate
    assert attributes.source.service == theirs.source.service
    assert dict(attributes.source.labels) == theirs.source.labels
    assert attributes.source.address.socket_address.address == "10.1.2.3"
    assert attributes.destination.address.socket_address.port_value == 10443
    assert attributes.destination.principal == "spiffe://prod.example.org/ns/egress/sa/gateway"
    http, their_http = attributes.request.http, theirs.request.http
    assert their_http is not None
    assert (http.id, http.method, http.path, http.host, http.scheme, http.protocol) == (
        their_http.id,
        their_http.method,
        their_http.path,
        their_http.host,
        their_http.scheme,
        their_http.protocol,
    )
    assert dict(http.headers) == their_http.headers
    assert [(h.key, h.raw_value) for h in http.header_map.headers] == [("x-raw", b"raw")]
    assert attributes.request.time.seconds == int(
        datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC).timestamp()
    )
    assert dict(attributes.context_extensions) == {"zone": "eu-west-prod"}
    assert attributes.tls_session.sni == "bank-gateway.example.com"


def test_a_pipe_address_decodes() -> None:
    full = CheckRequest(
        attributes=AttributeContext(source=AttributeContextPeer(address=Address(pipe=Pipe(path="/s"))))
    )
    assert ours.CheckRequest.FromString(bytes(full)).attributes.source.address.pipe.path == "/s"


def test_dropped_fields_survive_a_round_trip() -> None:
    data = bytes(_full_request())
    assert CheckRequest.parse(ours.CheckRequest.FromString(data).SerializeToString()) == _full_request()


@pytest.mark.parametrize("name", ["ext_authz_pb2.py", "ext_authz_pb2.pyi"])
def test_generated_code_is_current(tmp_path: Path, name: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", str(ROOT / "protos/authz/ext_authz/wire/ext_authz.proto")],
        check=True,
    )  # fmt: skip
    fresh = (tmp_path / "authz/ext_authz/wire" / name).read_text()
    assert fresh == (ROOT / "authz/ext_authz/wire" / name).read_text(), (
        "authz/ext_authz/wire is stale: run `make protos`"
    )
