"""Review lints: each code on a minimal policy, the silences, and the ages
taken from ``metadata.since`` or from a real git history."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from authz.policy import PolicyError, load_paths
from authz.policy.history import Revision, revisions
from authz.policy.lint import Code, LintOptions, LintReport, RuleUsage, lint
from tests.paths import ROOT
from tests.policy.conftest import WriteFiles

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CLEAN = """\
apiVersion: egress-authz/v1
kind: EgressPolicy
metadata: {name: svc, owner: team, change_ref: CHG-1}
spec:
  identities: [spiffe://prod.example.org/ns/a/sa/svc]
  egress:
    - id: api
      hosts: [api.example.com]
      ports: [443]
      purpose: the API
  exceptions:
    - id: hotfix
      hosts: [hotfix.example.com]
      ports: [443]
      owner: team
      reason: the vendor's fallback
      ticket: INC-1
      expires: 2026-12-01T00:00:00Z
"""
RULE = "    - id: api\n      hosts: [api.example.com]\n      ports: [443]\n      purpose: the API\n"


def history(added: datetime) -> list[Revision]:
    """A history in which the exception ``hotfix`` entered ``svc`` at ``added``."""
    document = {"kind": "EgressPolicy", "spec": {"exceptions": [{"id": "hotfix", "ticket": "INC-1"}]}}
    return [Revision("c0ffee", added, "add the hotfix", {"svc": document})]


POLICIES = ("svc", "other", "p0", "p1", "p2", "p3")  # the names the tests give policies
USED = RuleUsage(
    frozenset((p, r) for p in POLICIES for r in ("api", "hotfix")), NOW - timedelta(days=30), NOW
)
OPTIONS = LintOptions(now=NOW.timestamp(), history=history(NOW - timedelta(days=1)), usage=USED)


def lint_files(write_files: WriteFiles, options: LintOptions = OPTIONS, **files: str) -> LintReport:
    return lint(load_paths([write_files(**files)]), options)


def codes(report: LintReport) -> list[str]:
    return sorted(str(warning.code) for warning in report.warnings)


def test_a_clean_policy_has_no_warnings_even_with_every_input(write_files: WriteFiles) -> None:
    report = lint_files(write_files, a=CLEAN)
    assert (report.warnings, report.silenced, report.silences, report.errors) == ((), (), (), ())


# code -> (replacements in CLEAN, another file or None, option overrides, the codes expected)
CASES: dict[Code, tuple[list[tuple[str, str]], str | None, dict[str, Any], list[str]]] = {
    Code.POLICY_WITHOUT_OWNER: ([("owner: team,", "owner: ToDo,")], None, {}, []),
    Code.POLICY_WITHOUT_CHANGE_REF: ([(", change_ref: CHG-1", "")], None, {}, []),
    Code.POLICY_WITHOUT_RULES: ([(RULE, ""), ("  egress:\n", "  egress: []\n")], None, {}, []),
    Code.SNI_HOST_MISMATCH_ALLOWED: ([("  egress:\n", "  allow_sni_host_mismatch: true\n  egress:\n")], None, {}, []),
    Code.DRY_RUN_TOO_OLD: (
        [("CHG-1}", "CHG-1, since: 2026-11-01T00:00:00Z}"), ("  egress:\n", "  mode: dry-run\n  egress:\n")],
        None, {}, [],
    ),
    Code.IDENTITY_PREFIX: ([("ns/a/sa/svc]", "ns/a/*]")], None, {}, []),
    Code.PREFIX_OVERLAP: (
        [], CLEAN.replace("name: svc", "name: other").replace("ns/a/sa/svc]", "ns/a/*]"), {}, ["IDENTITY_PREFIX"],
    ),
    Code.RULE_WITHOUT_PURPOSE: ([("purpose: the API", "purpose: todo")], None, {}, []),
    Code.WILDCARD_DESTINATION: ([("[api.example.com]", '["*.example.com"]')], None, {}, []),
    Code.CIDR_DESTINATION: ([("[api.example.com]", "[10.0.0.0/8]")], None, {}, []),
    Code.METADATA_ENDPOINT_RULE: ([("[hotfix.example.com]", "[Metadata.Google.Internal.]")], None, {}, []),
    Code.WIDE_PORT_RANGE: ([("ports: [443]\n      purpose", 'ports: ["8000-9023"]\n      purpose')], None, {}, []),
    Code.SHARED_DESTINATION: (
        [("ns/a/sa/svc]", "ns/a/sa/s1, spiffe://prod.example.org/ns/a/sa/s2, spiffe://prod.example.org/ns/b/*]")],
        CLEAN.replace("name: svc", "name: other").replace("ns/a/sa/svc", "ns/c/sa/s4"), {},
        ["IDENTITY_PREFIX", "SHARED_DESTINATION"],  # at both policies' rules
    ),
    Code.UNUSED_RULE: ([], None, {"usage": dataclasses.replace(USED, used=frozenset({("svc", "hotfix")}))}, []),
    Code.EXCEPTION_WITHOUT_TICKET: ([("ticket: INC-1", "ticket: TODO")], None, {}, []),
    Code.EXCEPTION_TOO_LONG: ([], None, {"history": history(NOW - timedelta(days=25))}, []),
    Code.EXCEPTION_EXPIRED: ([("expires: 2026-12-01", "expires: 2026-11-20")], None, {}, []),
    Code.STALE_SILENCE: (
        [("the API\n", "the API\n      lint: {ignore: [CIDR_DESTINATION], reason: the vendor's block}\n")],
        None, {}, [],
    ),
}  # fmt: skip


def test_every_code_has_a_case_and_a_row_in_the_readme() -> None:
    assert set(CASES) == set(Code)
    section = (ROOT / "README.md").read_text().split("### Review lints", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\| ([A-Z_]+) \|", section, re.MULTILINE) == list(Code)


@pytest.mark.parametrize("code", list(CASES))
def test_each_code_fires_on_a_minimal_policy(write_files: WriteFiles, code: Code) -> None:
    replacements, other, overrides, also = CASES[code]
    text = CLEAN
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new)
    files = {"a": text} | ({"b": other} if other is not None else {})
    report = lint_files(write_files, dataclasses.replace(OPTIONS, **overrides), **files)
    assert codes(report) == sorted([code.value, *also])
    assert report.errors == ()


def test_warnings_read_file_line_field_code_message(write_files: WriteFiles) -> None:
    directory = write_files(a=CLEAN.replace("[api.example.com]", '["*.example.com"]'))
    (warning,) = lint_files(write_files, a=CLEAN.replace("[api.example.com]", '["*.example.com"]')).warnings
    assert str(warning) == (
        f"{directory / 'a.yaml'}:8: warning: spec.egress[0].hosts[0]: WILDCARD_DESTINATION:"
        " wildcard *.example.com admits every name directly below example.com"
    )


def test_shared_destination_names_the_identities_and_follows_the_threshold(write_files: WriteFiles) -> None:
    identities = [f"spiffe://prod.example.org/ns/a/sa/s{n}" for n in range(4)]
    files = {
        f"p{n}": CLEAN.replace("name: svc", f"name: p{n}").replace(
            "spiffe://prod.example.org/ns/a/sa/svc", identity
        )
        for n, identity in enumerate(identities)
    }
    warnings = lint_files(write_files, **files).warnings
    assert [warning.code for warning in warnings] == ["SHARED_DESTINATION"] * 4  # one at each policy's rule
    assert warnings[0].field == "spec.egress[0].hosts[0]"
    assert (
        "api.example.com:443 is allowed for 4 identities (more than 3) by p0, p1, p2, p3: "
        in warnings[0].message
    )
    assert all(identity in warnings[0].message for identity in identities)
    assert (
        lint_files(
            write_files, dataclasses.replace(OPTIONS, max_identities_per_destination=4), **files
        ).warnings
        == ()
    )
    on_8443 = files["p3"].replace("ports: [443]\n      purpose", "ports: [8443]\n      purpose")
    assert lint_files(write_files, **(files | {"p3": on_8443})).warnings == ()  # another port: 3 identities


def test_a_policy_silence_covers_its_rules_and_a_rule_silence_only_its_rule(write_files: WriteFiles) -> None:
    two_wildcards = CLEAN.replace("[api.example.com]", '["*.example.com"]').replace(
        "[hotfix.example.com]", '["*.hotfix.example.com"]'
    )
    on_rule = two_wildcards.replace(
        "the API\n", "the API\n      lint: {ignore: [WILDCARD_DESTINATION], reason: vendor}\n"
    )
    report = lint_files(write_files, a=on_rule)
    assert [(w.field, w.code) for w in report.warnings] == [
        ("spec.exceptions[0].hosts[0]", "WILDCARD_DESTINATION")
    ]
    ((problem, silence),) = report.silenced
    assert (problem.field, silence.target, silence.reason) == ("spec.egress[0].hosts[0]", "svc/api", "vendor")
    on_policy = two_wildcards.replace(
        "CHG-1}", "CHG-1, lint: {ignore: [WILDCARD_DESTINATION], reason: vendor}}"
    )
    report = lint_files(write_files, a=on_policy)
    assert report.warnings == ()
    (use,) = report.silences
    assert (use.silence.target, use.silenced, use.stale) == ("svc", {"WILDCARD_DESTINATION": 2}, [])


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("{ignore: [WILDCARD_DESTINATION]}", "spec.egress[0].lint.reason: missing required key 'reason'"),
        ('{ignore: [WILDCARD_DESTINATION], reason: "  "}', "a silence needs a stated reason, not a blank"),
        ("{ignore: [], reason: vendor}", "spec.egress[0].lint.ignore: List should have at least 1 item"),
        ("{ignore: [wildcard], reason: vendor}", "'wildcard' is not a lint code: they are UPPER_SNAKE"),
    ],
)
def test_a_malformed_silence_is_refused_when_loading(
    write_files: WriteFiles, block: str, message: str
) -> None:
    directory = write_files(a=CLEAN.replace("the API\n", f"the API\n      lint: {block}\n"))
    with pytest.raises(PolicyError) as caught:
        load_paths([directory])
    (problem,) = caught.value.problems
    assert problem.line == 11
    assert message in str(problem)


def test_unknown_codes_and_todo_reasons_are_errors_at_their_lines(write_files: WriteFiles) -> None:
    block = "lint: {ignore: [WILDCARD_DESTINATON, STALE_SILENCE, CIDR_DESTINATION, CIDR_DESTINATION], reason: TODO}"
    report = lint_files(write_files, a=CLEAN.replace("the API\n", f"the API\n      {block}\n"))
    assert [(e.line, e.field, e.message) for e in report.errors] == [
        (11, "spec.egress[0].lint.reason", "a silence needs a stated reason, not TODO"),
        (11, "spec.egress[0].lint.ignore[0]",
         "unknown lint code 'WILDCARD_DESTINATON' (did you mean WILDCARD_DESTINATION?)"),
        (11, "spec.egress[0].lint.ignore[1]",
         "STALE_SILENCE cannot be silenced: remove the code that silences nothing"),
        (11, "spec.egress[0].lint.ignore[3]", "CIDR_DESTINATION is listed twice"),
    ]  # fmt: skip
    assert all(error.severity == "error" for error in report.errors)


def test_a_stale_silence_is_reported_at_its_code(write_files: WriteFiles) -> None:
    block = """\
      lint:
        ignore: [WILDCARD_DESTINATION, CIDR_DESTINATION]
        reason: the vendor's names
"""
    text = CLEAN.replace("[api.example.com]", '["*.example.com"]').replace("the API\n", "the API\n" + block)
    report = lint_files(write_files, a=text)
    (warning,) = report.warnings
    assert (warning.line, warning.field, warning.code) == (
        12,
        "spec.egress[0].lint.ignore[1]",
        "STALE_SILENCE",
    )
    assert warning.message == "CIDR_DESTINATION silences nothing on svc/api: remove it from the silence"
    (use,) = report.silences
    assert (use.silenced, use.stale) == ({"WILDCARD_DESTINATION": 1}, ["CIDR_DESTINATION"])


def test_silencing_what_the_clock_or_a_log_may_yet_raise_is_not_stale(write_files: WriteFiles) -> None:
    silence = (
        "\n      lint: {ignore: [EXCEPTION_EXPIRED, UNUSED_RULE, EXCEPTION_TOO_LONG], reason: the demo}\n"
    )
    text = CLEAN.replace("expires: 2026-12-01T00:00:00Z\n", "expires: 2026-12-01T00:00:00Z" + silence)
    before = lint_files(write_files, dataclasses.replace(OPTIONS, usage=None, history=None), a=text)
    assert before.warnings == ()
    assert (before.silences[0].silenced, before.silences[0].pending) == (
        {},
        ["EXCEPTION_EXPIRED", "UNUSED_RULE", "EXCEPTION_TOO_LONG"],
    )
    after = dataclasses.replace(OPTIONS, now=datetime(2026, 12, 2, tzinfo=UTC).timestamp())
    report = lint_files(write_files, after, a=text)
    assert report.silences[0].silenced == {"EXCEPTION_EXPIRED": 1}
    # With a log that used it and a history that dates it, the other two codes are judged, and stale.
    assert [w.message.split(" ")[0] for w in report.warnings] == ["UNUSED_RULE", "EXCEPTION_TOO_LONG"]
    dry_run = CLEAN.replace("CHG-1}", "CHG-1, lint: {ignore: [DRY_RUN_TOO_OLD], reason: a pilot}}")
    assert (
        lint_files(write_files, a=dry_run.replace("  egress:\n", "  mode: dry-run\n  egress:\n")).warnings
        == ()
    )
    (stale,) = lint_files(write_files, a=dry_run).warnings  # an enforced policy never will
    assert stale.code == "STALE_SILENCE"


def test_dry_run_age_from_metadata_since(write_files: WriteFiles) -> None:
    dry_run = CLEAN.replace("  egress:\n", "  mode: dry-run\n  egress:\n")
    old = dry_run.replace("CHG-1}", "CHG-1, since: 2026-11-01T00:00:00+01:00}")
    (warning,) = lint_files(write_files, a=old).warnings
    assert (warning.field, warning.code) == ("spec.mode", "DRY_RUN_TOO_OLD")
    assert warning.message.startswith(
        "policy svc has been in dry-run for 22 days (since 2026-10-31, from metadata.since)"
    )
    assert lint_files(write_files, dataclasses.replace(OPTIONS, max_dry_run_days=30), a=old).warnings == ()
    assert (
        lint_files(write_files, a=dry_run.replace("CHG-1}", "CHG-1, since: 2026-11-20T00:00:00Z}")).warnings
        == ()
    )
    assert lint_files(write_files, a=old.replace("mode: dry-run", "mode: enforce")).warnings == ()
    assert (
        lint_files(write_files, dataclasses.replace(OPTIONS, history=None), a=dry_run).warnings == ()
    )  # age unknown


def _commit(repo: Path, day: int, text: str) -> None:
    (repo / "policies").mkdir(exist_ok=True)
    (repo / "policies" / "svc.yaml").write_text(text)
    when = f"2026-10-{day:02d}T12:00:00+00:00"
    env = {**os.environ, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
    for args in (["add", "-A"], ["commit", "-qm", f"day {day}"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)


def _lint_repo(repo: Path, now: datetime) -> list[tuple[str, str]]:
    paths = [repo / "policies"]
    options = LintOptions(now=now.timestamp(), history=revisions(paths))
    return [(str(w.code), w.message) for w in lint(load_paths(paths), options).warnings]


def test_dry_run_age_and_exception_lifetime_from_a_real_git_history(repo: Path) -> None:
    dry_run = CLEAN.replace("  egress:\n", "  mode: dry-run\n  egress:\n")
    _commit(repo, 1, CLEAN.replace("expires: 2026-12-01", "expires: 2026-10-25"))
    _commit(repo, 3, dry_run.replace("expires: 2026-12-01", "expires: 2026-10-25"))
    _commit(repo, 10, dry_run.replace("expires: 2026-12-01", "expires: 2026-10-25").replace("CHG-1", "CHG-2"))
    at = datetime(2026, 10, 20, 12, tzinfo=UTC)
    assert _lint_repo(repo, at) == [
        ("DRY_RUN_TOO_OLD", "policy svc has been in dry-run for 17 days (since 2026-10-03, from git), longer than 14:"
         " enforce it, or fix what it would deny"),
    ]  # fmt: skip
    # Renewed in the work tree (not yet committed): 13 days from `at`, which compile allows, but the
    # exception entered the policy on day 1, so it has been open 32 days.
    (repo / "policies" / "svc.yaml").write_text(dry_run.replace("expires: 2026-12-01", "expires: 2026-11-02"))
    found = _lint_repo(repo, at)
    assert [code for code, _ in found] == ["DRY_RUN_TOO_OLD", "EXCEPTION_TOO_LONG"]
    assert found[1][1].startswith(
        "exception hotfix entered the policy on 2026-10-01 (git) and expires 2026-11-02: open 32 days,"
        " beyond the maximum lifetime of 30 days"
    )
    # metadata.since, when written, wins over git
    since = dry_run.replace("CHG-1}", "CHG-1, since: 2026-10-15T00:00:00Z}").replace(
        "2026-12-01", "2026-10-25"
    )
    (repo / "policies" / "svc.yaml").write_text(since)
    assert _lint_repo(repo, at) == []
