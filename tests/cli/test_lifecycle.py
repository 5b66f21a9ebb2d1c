"""`authz revoke` and `authz exceptions`, as an incident responder and a reviewer run them."""

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from authz.cli import main
from tests.cli.helpers import run_authz
from tests.paths import EXAMPLES

CI = "spiffe://prod.example.org/ns/ci/sa/ci-runner"


def _explain(policies: Path, identity: str, host: str, *extra: str) -> dict[str, object]:
    result = run_authz(
        "explain",
        str(policies),
        "--identity",
        identity,
        "--sni",
        host,
        "--host",
        host,
        "--port",
        "443",
        "--json",
        *extra,
    )
    assert result.returncode == 0, result.stderr
    record: dict[str, object] = json.loads(result.stdout)
    return record


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    copy = tmp_path / "policies"
    shutil.copytree(EXAMPLES, copy)
    return copy


def test_revoke_then_lift_leaves_the_file_as_it_was(policies: Path) -> None:
    path = policies / "revocations.yaml"
    before = path.read_text()
    added = run_authz(
        "revoke",
        str(path),
        "--identity",
        CI,
        "--reason",
        "token leaked",
        "--by",
        "alice",
        "--ticket",
        "INC-1",
    )
    assert added.returncode == 0, added.stderr
    text = path.read_text()
    assert text.startswith(before)  # comments and existing entries untouched, the new one last
    assert f"    - identity: {CI}\n      reason: token leaked\n      by: alice\n      ticket: INC-1\n" in text
    record = _explain(policies, CI, "github.com")
    assert (record["reason"], record["revocation"], record["ticket"]) == ("REVOKED", CI, "INC-1")
    lifted = run_authz("revoke", str(path), "--lift", CI)
    assert lifted.returncode == 0, lifted.stderr
    assert path.read_text() == before
    assert _explain(policies, CI, "github.com")["reason"] == "ALLOWED_BY_RULE"


def test_allow_only_contains_the_identity_to_what_its_policy_allows_there(policies: Path) -> None:
    path = policies / "revocations.yaml"
    result = run_authz(
        "revoke",
        str(path),
        "--identity",
        CI,
        "--reason",
        "r",
        "--by",
        "b",
        "--allow-only",
        "registry.npmjs.org:443",
    )
    assert result.returncode == 0, result.stderr
    assert "allow_only:\n        - {hosts: [registry.npmjs.org], ports: [443]}" in path.read_text()
    assert _explain(policies, CI, "registry.npmjs.org")["reason"] == "ALLOWED_BY_RULE"
    assert _explain(policies, CI, "github.com")["reason"] == "REVOKED"


def test_revoke_creates_the_file_and_lists_as_json(tmp_path: Path) -> None:
    path = tmp_path / "incident.yaml"
    at = "2026-11-23T10:00:00Z"
    namespace = "spiffe://prod.example.org/ns/sandbox/*"
    assert main(["revoke", str(path), "--identity", namespace, "--reason", "r", "--by", "b", "--at", at]) == 0
    listed = run_authz("revoke", str(path), "--list", "--json")
    assert json.loads(listed.stdout) == [
        {"identity": namespace, "reason": "r", "by": "b", "ticket": None, "at": at, "allow_only": None}
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--identity", "spiffe://prod.example.org/ns/reporting/sa/exporter"], "is already revoked"),
        (["--identity", "spiffe://prod.example.org/../x"], "bad SPIFFE ID"),
        (["--identity", "spiffe://prod.example.org/*"], "too broad"),
        (["--lift", "spiffe://prod.example.org/ns/nobody/sa/x"], "is not revoked"),
    ],
)
def test_a_bad_revocation_changes_nothing(policies: Path, args: list[str], message: str) -> None:
    path = policies / "revocations.yaml"
    before = path.read_text()
    result = run_authz("revoke", str(path), *args, "--reason", "r", "--by", "b")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert path.read_text() == before
    assert [p.name for p in policies.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_revoke_needs_reason_and_by(tmp_path: Path) -> None:
    result = run_authz("revoke", str(tmp_path / "r.yaml"), "--identity", CI)
    assert result.returncode != 0
    assert "--reason and --by" in result.stderr
    assert not (tmp_path / "r.yaml").exists()


def _policy_with_exception(directory: Path, expires: datetime) -> Path:
    text = (EXAMPLES / "ci-runner.yaml").read_text() + (
        "  exceptions:\n"
        "    - {id: hotfix, hosts: [pastebin.com], ports: [443], owner: alice, reason: debugging,"
        f" ticket: INC-7, expires: {expires.isoformat()}}}\n"
    )
    directory.mkdir(exist_ok=True)
    (directory / "ci.yaml").write_text(text)
    return directory


def test_exceptions_lists_open_soon_and_expired(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    soon = _policy_with_exception(tmp_path / "soon", now + timedelta(hours=30))
    result = run_authz("exceptions", str(soon), "--json")
    (status,) = json.loads(result.stdout)
    assert (status["id"], status["owner"], status["ticket"], status["state"]) == (
        "hotfix",
        "alice",
        "INC-7",
        "expiring",
    )
    assert 29 * 3600 < status["seconds_left"] <= 30 * 3600
    assert (
        json.loads(run_authz("exceptions", str(soon), "--json", "--expiring-within", "1d").stdout)[0]["state"]
        == "open"
    )
    assert run_authz("exceptions", str(soon), "--fail-on-expired").returncode == 0

    gone = _policy_with_exception(tmp_path / "gone", now - timedelta(hours=1))
    text = run_authz("exceptions", str(gone), "--fail-on-expired")
    assert text.returncode == 1
    assert "EXPIRED" in text.stdout
    check = run_authz("check", str(gone))
    assert check.returncode == 0  # an expired exception warns; the file still loads
    assert "spec.exceptions[0].expires: EXCEPTION_EXPIRED: exception hotfix expired at" in check.stderr


def test_an_exception_beyond_the_maximum_lifetime_is_an_error(tmp_path: Path) -> None:
    far = _policy_with_exception(tmp_path / "far", datetime.now(UTC) + timedelta(days=40))
    result = run_authz("check", str(far))
    assert result.returncode == 1
    assert f"{far / 'ci.yaml'}:" in result.stderr
    assert "spec.exceptions[0].expires: exception hotfix expires" in result.stderr
    assert "beyond the maximum lifetime of 30 days" in result.stderr
    assert run_authz("check", str(far), "--max-exception-days", "60").returncode == 0


@pytest.mark.parametrize("missing", ["owner", "reason", "ticket", "expires"])
def test_an_exception_needs_owner_reason_ticket_and_expiry(tmp_path: Path, missing: str) -> None:
    fields = {"id": "x", "hosts": "[pastebin.com]", "ports": "[443]", "owner": "a", "reason": "r", "ticket": "T",
              "expires": "2026-12-01T00:00:00Z"}  # fmt: skip
    del fields[missing]
    flow = ", ".join(f"{key}: {value}" for key, value in fields.items())
    (tmp_path / "p.yaml").write_text(
        (EXAMPLES / "ci-runner.yaml").read_text() + f"  exceptions:\n    - {{{flow}}}\n"
    )
    result = run_authz("check", str(tmp_path))
    assert result.returncode == 1
    assert f"spec.exceptions[0].{missing}: missing required key {missing!r}" in result.stderr


@pytest.mark.parametrize("expires", ["2026-12-01T00:00:00", "2026-12-01", "next week"])
def test_an_expiry_needs_an_offset(tmp_path: Path, expires: str) -> None:
    _policy_with_exception(tmp_path, datetime.now(UTC))
    text = (tmp_path / "ci.yaml").read_text()
    (tmp_path / "ci.yaml").write_text(text.rsplit("expires: ", 1)[0] + f"expires: {expires}}}\n")
    result = run_authz("check", str(tmp_path))
    assert result.returncode == 1
    assert "spec.exceptions[0].expires:" in result.stderr


def test_explain_at_an_instant(capsys: pytest.CaptureFixture[str]) -> None:
    payments = "spiffe://prod.example.org/ns/payments/sa/payments-api"
    args = ["explain", str(EXAMPLES), "--identity", payments, "--sni", "api.fraud-scoring.example", "--host",
            "api.fraud-scoring.example", "--port", "443"]  # fmt: skip
    assert main([*args, "--at", "2026-12-05T17:59:59Z"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ALLOW  ALLOWED_BY_EXCEPTION")
    assert "exception    backup-fraud-scoring (owner team-payments, ticket INC-2198)" in out
    assert main([*args, "--at", "2026-12-05T18:00:00Z"]) == 0
    assert capsys.readouterr().out.startswith("DENY  EXCEPTION_EXPIRED")
