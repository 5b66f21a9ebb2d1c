"""Policy history from a real git repository the test builds commit by commit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from authz.policy.history import HistoryError, dry_run_since, exception_lives, revisions

POLICY = """\
apiVersion: egress.authz/v1
kind: EgressPolicy
metadata: {{name: ci-runner, owner: platform}}
spec:
  identity: spiffe://prod.example.org/ns/ci/sa/runner
  mode: {mode}
  rules: [{{id: github, hosts: [github.com], ports: [443]}}]
  exceptions: [{exceptions}]
"""
EXCEPTION = "{{id: {id}, hosts: [x.example], ports: [443], owner: a, reason: b, ticket: {id}-T, expires: x}}"


def commit(repo: Path, day: int, mode: str, *exceptions: str, message: str = "change") -> None:
    text = POLICY.format(mode=mode, exceptions=", ".join(EXCEPTION.format(id=e) for e in exceptions))
    (repo / "policies").mkdir(exist_ok=True)
    (repo / "policies" / "ci.yaml").write_text(text)
    when = f"2026-10-{day:02d}T12:00:00+00:00"
    env = {**os.environ, "GIT_AUTHOR_DATE": when, "GIT_COMMITTER_DATE": when}
    for args in (["add", "-A"], ["commit", "-qm", message]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)


def test_dry_run_streak_and_exception_lives(repo: Path) -> None:
    commit(repo, 1, "dry-run")
    commit(repo, 3, "enforce", "hotfix")
    commit(repo, 5, "dry-run", "hotfix", "vendor")
    commit(repo, 9, "dry-run", "vendor")
    (repo / "policies" / "broken.yaml").write_text("kind: [unclosed\n")
    commit(repo, 10, "dry-run", "vendor", message="a broken file beside")
    history = revisions([repo / "policies"])
    assert [revision.time.day for revision in history] == [1, 3, 5, 9, 10]
    assert set(history[-1].policies) == {"ci-runner"}
    assert dry_run_since(history, "ci-runner") is not None
    assert dry_run_since(history, "ci-runner").day == 5  # type: ignore[union-attr]
    assert dry_run_since(history, "no-such-policy") is None
    lives = {(life.exception, life.added.day, life.removed.day if life.removed else None, life.ticket)
             for life in exception_lives(history)}  # fmt: skip
    assert lives == {("hotfix", 3, 9, "hotfix-T"), ("vendor", 5, None, "vendor-T")}


def test_not_a_repository_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("kind: EgressPolicy\n")
    with pytest.raises(HistoryError):
        revisions([tmp_path / "p.yaml"])


def test_paths_in_another_repository_are_an_error(
    repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    commit(repo, 1, "enforce")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(HistoryError, match="not in the git repository"):
        revisions([repo / "policies", elsewhere])
