"""Reading policy and policy-test files from disk into validated models."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from authz.policy.errors import PolicyError, Problem, Severity, format_field, shorten
from authz.policy.model import API_VERSION, EgressPolicy, EgressPolicyTest, EgressRevocation
from authz.policy.yaml_source import Loc, YamlError, read_documents

__all__ = ["MAX_FILE_BYTES", "Loaded", "PolicySet", "Source", "discover", "load_paths"]

MAX_FILE_BYTES = 4 * 1024 * 1024
_MESSAGE_LIMIT = 300  # characters of one problem's message (a bad value of a megabyte is quoted, cut short)
_SUFFIXES = (".yaml", ".yml")
_NOT_POLICIES = frozenset({"kustomization.yaml", "kustomization.yml"})
_KINDS: dict[str, type[BaseModel]] = {
    "EgressPolicy": EgressPolicy,
    "EgressPolicyTest": EgressPolicyTest,
    "EgressRevocation": EgressRevocation,
}

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a document came from, to report problems at their lines."""

    file: str
    lines: Mapping[Loc, int]

    def line(self, loc: Sequence[str | int]) -> int:
        """The line of ``loc``, or of its nearest ancestor that has one."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(tuple(loc[:end]))
            if line is not None:
                return line
        return 1

    def problem(
        self, loc: Sequence[str | int], message: str, severity: Severity = "error", code: str | None = None
    ) -> Problem:
        return Problem(self.file, self.line(loc), message, format_field(loc), severity, code)


@dataclass(frozen=True, slots=True)
class Loaded(Generic[M]):
    model: M
    source: Source


@dataclass(frozen=True, slots=True)
class PolicySet:
    policies: tuple[Loaded[EgressPolicy], ...]
    tests: tuple[Loaded[EgressPolicyTest], ...]
    version: str  # content hash of the files read
    revocations: tuple[Loaded[EgressRevocation], ...] = ()


def discover(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, and the *.yaml/*.yml files below directories,
    leaving out names that start with a dot (a Kubernetes ConfigMap volume
    holds each file twice, as ``NAME`` and under ``..2026_11_23.../NAME``) and
    ``kustomization.yaml`` (the one beside the policies makes their ConfigMap)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(_policy_files(path))
        else:
            found.append(path)
    return found


def _policy_files(directory: Path) -> Iterator[Path]:
    """The walk never enters a dot-named directory: the kubelet removes its
    old ``..2026_11_23...`` one as it swaps a ConfigMap, and a walk inside it
    would fail on a directory gone (seen in the hot-reload test: 1 run in
    many). A directory that vanishes mid-walk is skipped (os.walk's default);
    like Path.rglob, symlinked directories are not followed."""
    for root, directories, files in os.walk(directory):
        directories[:] = [name for name in directories if not name.startswith(".")]
        for name in files:
            candidate = Path(root, name)
            if (
                not name.startswith(".")
                and candidate.suffix in _SUFFIXES
                and name not in _NOT_POLICIES
                and candidate.is_file()
            ):
                yield candidate


def load_paths(paths: Sequence[str | Path]) -> PolicySet:
    """Load every document below ``paths``; raise PolicyError listing all problems."""
    problems: list[Problem] = []
    policies: list[Loaded[EgressPolicy]] = []
    tests: list[Loaded[EgressPolicyTest]] = []
    revocations: list[Loaded[EgressRevocation]] = []
    digests: list[bytes] = []
    files = discover(paths)
    if not files:
        raise PolicyError([Problem(" ".join(map(str, paths)), 0, "no policy files found")])
    for path in files:
        text = _read(path, problems)
        if text is None:
            continue
        try:
            documents = read_documents(text)
        except YamlError as exc:
            problems.append(Problem(str(path), exc.line, exc.message))
            continue
        if not any(document.data is not None for document in documents):
            # An empty file would silently drop what it held: a file being written, most likely.
            problems.append(Problem(str(path), 1, "holds no YAML document (empty or half-written?)"))
            continue
        decides = False  # does the file hold anything a decision depends on (not only tests)?
        for document in documents:
            source = Source(str(path), document.lines)
            loaded = _validate(document.data, source, problems)
            if isinstance(loaded, EgressPolicy):
                policies.append(Loaded(loaded, source))
            elif isinstance(loaded, EgressPolicyTest):
                tests.append(Loaded(loaded, source))
            elif isinstance(loaded, EgressRevocation):
                revocations.append(Loaded(loaded, source))
            decides |= loaded is not None and not isinstance(loaded, EgressPolicyTest)
        if decides:
            digests.append(hashlib.sha256(text.encode()).digest())
    if problems:
        raise PolicyError(problems)
    # The version names what decides: files of tests only leave it alone, so a ConfigMap
    # without the tests serves the version `authz check` prints for the repository.
    version = hashlib.sha256(b"".join(sorted(digests))).hexdigest()[:16]
    return PolicySet(tuple(policies), tuple(tests), f"sha256:{version}", tuple(revocations))


def _read(path: Path, problems: list[Problem]) -> str | None:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        problems.append(Problem(str(path), 0, f"cannot read: {exc.strerror or exc}"))
        return None
    if len(data) > MAX_FILE_BYTES:
        problems.append(Problem(str(path), 0, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; split it"))
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.append(Problem(str(path), line, "not UTF-8 text"))
        return None


def _validate(data: Any, source: Source, problems: list[Problem]) -> BaseModel | None:
    if data is None:
        return None  # an empty document, e.g. a trailing '---'
    if not isinstance(data, dict):
        problems.append(
            source.problem((), "a document must be a mapping with apiVersion, kind, metadata, spec")
        )
        return None
    if data.get("apiVersion") != API_VERSION:
        problems.append(
            source.problem(("apiVersion",), f"must be {API_VERSION!r}, got {data.get('apiVersion')!r}")
        )
        return None
    kind = data.get("kind")
    model = _KINDS.get(kind) if isinstance(kind, str) else None  # a list or a mapping is no kind either
    if model is None:
        problems.append(
            source.problem(("kind",), f"must be one of {', '.join(_KINDS)}, got {data.get('kind')!r}")
        )
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            problems.append(_problem(error, source))
        return None


def _problem(error: Any, source: Source) -> Problem:
    loc: tuple[str | int, ...] = tuple(error["loc"])
    message = shorten(error["msg"].removeprefix("Value error, "), _MESSAGE_LIMIT)
    kind = error["type"]
    if kind == "extra_forbidden":
        message = f"unknown key {loc[-1]!r}"
        field_loc = loc
    elif kind == "missing":
        message = f"missing required key {loc[-1]!r}"
        field_loc = loc
        loc = loc[:-1]
    else:
        field_loc = loc
    return Problem(source.file, source.line(loc), message, format_field(field_loc))
