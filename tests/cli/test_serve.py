"""`authz serve`'s choices made before anything listens: the transport, the mTLS flags, the state store."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from authz.cli import main
from authz.cli import serve as serve_cli
from authz.ext_authz import workers
from authz.ext_authz.server import ServeConfig
from authz.gateway.lab import free_port
from authz.gateway.pki import CertificateAuthority
from tests.paths import ROOT
from tests.processes import listening

POLICIES = str(ROOT / "policies")


def test_the_default_transport_is_pyvoy_where_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert serve_cli.default_transport() == "pyvoy"  # a dependency on Linux x86_64 and aarch64
    monkeypatch.setattr(serve_cli, "find_spec", lambda name: None)
    assert serve_cli.default_transport() == "grpcio"


def test_pyvoy_asked_for_where_it_is_missing_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(workers, "find_spec", lambda name: None)
    with caplog.at_level(logging.ERROR, "authz.server"):
        assert workers.run(ServeConfig((POLICIES,), transport="pyvoy")) == 2
    assert "pyvoy is not installed" in caplog.text
    assert "--transport grpcio" in caplog.text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{cert}"], "go together"),
        (["--allow-caller", "spiffe://prod.example.org/ns/egress/sa/gw"], "needs --tls-cert"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--client-ca", "{ca}"], "at least one --allow-caller"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--client-ca", "{ca}", "--allow-caller", "gw"],
         "--allow-caller: scheme"),
        (["--tls-cert", "{cert}", "--tls-key", "{other}", "--client-ca", "{ca}",
          "--allow-caller", "spiffe://prod.example.org/ns/egress/sa/gw"], "not a matching certificate"),
        (["--tls-cert", "{missing}", "--tls-key", "{key}", "--client-ca", "{ca}",
          "--allow-caller", "spiffe://prod.example.org/ns/egress/sa/gw"], "No such file"),
    ],
)  # fmt: skip
def test_bad_mtls_flags_are_refused_before_anything_listens(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    served = ca.issue_svid("spiffe://prod.example.org/ns/egress/sa/authz", server_names=["127.0.0.1"])
    other = ca.issue_svid("spiffe://prod.example.org/ns/egress/sa/other")
    files = {"cert": served.certificate, "key": served.key, "ca": ca.bundle, "other": other.key,
             "missing": tmp_path / "missing.pem"}  # fmt: skip
    args = [flag.format(**{k: str(v) for k, v in files.items()}) for flag in flags]
    assert main(["serve", "--policy", POLICIES, "--listen", "127.0.0.1:1", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("transport", ["grpcio", "pyvoy"])
def test_a_bad_shadow_policy_stops_serve_with_file_and_line(
    transport: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "candidate.yaml"
    bad.write_text(
        "apiVersion: egress-authz/v1\nkind: EgressPolicy\nmetadata: {name: x, owner: team-x}\nspec:\n"
        "  identities: [spiffe://prod.example.org/ns/x/sa/y]\n  egress:\n"
        "    - {id: r, hosts: [example.com], ports: [70000]}\n"
    )
    args = ["serve", "--policy", POLICIES, "--shadow-policy", str(bad), "--listen", "127.0.0.1:0"]
    with caplog.at_level(logging.ERROR, "authz.server"):
        assert main([*args, "--transport", transport]) == 2
    assert "the shadow policy (--shadow-policy) cannot be loaded" in caplog.text
    assert f"{bad}:7: " in caplog.text  # the bad port's line


def test_a_shadow_policy_with_nowhere_to_record_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert main(["serve", "--policy", POLICIES, "--shadow-policy", POLICIES, "--listen", "127.0.0.1:1"]) == 2
    assert "--shadow-policy records into spans, --decision-log or --metrics-port" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://redis:6379/0", "the scheme is one of redis://, rediss:// (TLS), unix://"),
        ("redis://:hunter2@redis:port/0", "--state-store redis://:***@redis:port/0: Port could not be cast"),
        ("redis://redis:6379/zero", "the path is the database number"),
        ("unix://redis.sock", "unix:///absolute/path.sock"),
    ],
)
def test_a_bad_state_store_url_exits_2_before_anything_listens(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    args = ["serve", "--policy", POLICIES, "--listen", f"127.0.0.1:{port}", "--state-store", url]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "hunter2" not in err
    assert not listening(port)


def test_a_state_store_ttl_is_a_duration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(
            ["serve", "--policy", POLICIES, "--state-store", "redis://redis", "--first-seen-ttl", "a quarter"]
        )
    assert exited.value.code == 2
    assert "not a duration such as 7d" in capsys.readouterr().err
