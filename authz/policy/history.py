"""Policy files through their git history: when a policy entered dry-run,
when an exception was added and removed. The repository is the record of
who changed what; this reads it rather than asking authors to keep dates."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ExceptionLife", "HistoryError", "Revision", "dry_run_since", "exception_lives", "revisions"]

_SUFFIXES = (".yaml", ".yml")


class HistoryError(Exception):
    """No history to read: not a git work tree, or git is missing."""


@dataclass(frozen=True, slots=True)
class Revision:
    """The policy files as one commit left them: EgressPolicy documents by
    ``metadata.name`` (as parsed; a file that did not parse then is left out)."""

    commit: str
    time: datetime
    subject: str
    policies: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class ExceptionLife:
    policy: str
    exception: str
    added: datetime
    removed: datetime | None  # None: still in the newest revision
    ticket: str | None


def revisions(paths: Sequence[str | Path], *, limit: int = 1000) -> list[Revision]:
    """The commits that touched the policy files under ``paths`` (the
    newest ``limit``), oldest first."""
    resolved = [Path(path).resolve() for path in paths]
    anchor = resolved[0] if resolved[0].is_dir() else resolved[0].parent
    top = Path(_git(anchor, "rev-parse", "--show-toplevel").strip())
    outside = [str(path) for path in resolved if not path.is_relative_to(top)]
    if outside:
        raise HistoryError(f"{', '.join(outside)}: not in the git repository {top}")
    relative = [str(path.relative_to(top)) if path != top else "." for path in resolved]
    log = _git(top, "log", f"--max-count={limit}", "--format=%H%x00%cI%x00%s", "--", *relative)
    commits = [line.split("\0", 2) for line in reversed(log.splitlines()) if line]
    found: list[Revision] = []
    with subprocess.Popen(
        ["git", "-C", str(top), "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as batch:
        assert batch.stdin is not None
        assert batch.stdout is not None
        for commit, when, subject in commits:
            names = _git(top, "ls-tree", "-r", "--name-only", commit, "--", *relative).splitlines()
            policies: dict[str, Mapping[str, Any]] = {}
            for name in names:
                if not name.endswith(_SUFFIXES):
                    continue
                batch.stdin.write(f"{commit}:{name}\n".encode())
                batch.stdin.flush()
                header = batch.stdout.readline().split()
                if len(header) < 3 or header[1] != b"blob":
                    continue
                text = batch.stdout.read(int(header[2]) + 1)[:-1]
                policies.update(_policies(text))
            found.append(Revision(commit, datetime.fromisoformat(when), subject, policies))
        batch.stdin.close()
    return found


def dry_run_since(history: Sequence[Revision], policy: str) -> datetime | None:
    """When ``policy`` last entered dry-run and stayed there to the newest
    revision; None when the newest revision does not have it in dry-run."""
    since: datetime | None = None
    for revision in history:
        document = revision.policies.get(policy)
        in_dry_run = document is not None and _get(document, "spec", "mode") == "dry-run"
        if not in_dry_run:
            since = None
        elif since is None:
            since = revision.time
    return since


def exception_lives(history: Sequence[Revision]) -> list[ExceptionLife]:
    """Every break-glass exception's life: the first revision that had it,
    and the first after that which did not (a re-added one lives again)."""
    lives: list[ExceptionLife] = []
    open_: dict[tuple[str, str], tuple[datetime, str | None]] = {}
    for revision in history:
        present: dict[tuple[str, str], str | None] = {}
        for name, document in revision.policies.items():
            exceptions = _get(document, "spec", "exceptions")
            for entry in exceptions if isinstance(exceptions, list) else []:
                if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
                    ticket = entry.get("ticket")
                    present[(name, entry["id"])] = ticket if isinstance(ticket, str) else None
        for key in [key for key in open_ if key not in present]:
            added, ticket = open_.pop(key)
            lives.append(ExceptionLife(key[0], key[1], added, revision.time, ticket))
        for key, ticket in present.items():
            open_.setdefault(key, (revision.time, ticket))
    lives.extend(ExceptionLife(key[0], key[1], added, None, ticket) for key, (added, ticket) in open_.items())
    return sorted(lives, key=lambda life: (life.added, life.policy, life.exception))


def _policies(text: bytes) -> dict[str, Mapping[str, Any]]:
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        return {}
    found: dict[str, Mapping[str, Any]] = {}
    for document in documents:
        if isinstance(document, Mapping) and document.get("kind") == "EgressPolicy":
            name = _get(document, "metadata", "name")
            if isinstance(name, str):
                found[name] = document
    return found


def _get(document: Mapping[str, Any], *keys: str) -> Any:
    value: Any = document
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _git(where: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise HistoryError("git is not installed") from error
    if done.returncode != 0:
        raise HistoryError(f"{where}: {done.stderr.strip() or 'git failed'}")
    return done.stdout
