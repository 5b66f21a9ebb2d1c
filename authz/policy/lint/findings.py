"""What the checks produce and what they are told: a Finding is a warning
before silences are applied; LintOptions carry the thresholds and what only
the command line can gather (git history, decision logs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from authz.policy.compile import DEFAULT_MAX_EXCEPTION_DAYS
from authz.policy.errors import Problem
from authz.policy.history import Revision
from authz.policy.lint.codes import Code
from authz.policy.load import Loaded
from authz.policy.model import EgressPolicy

__all__ = [
    "DEFAULT_MAX_DRY_RUN_DAYS",
    "DEFAULT_MAX_IDENTITIES_PER_DESTINATION",
    "Finding",
    "LintOptions",
    "Loc",
    "RuleUsage",
    "is_placeholder",
    "scope_of",
]

DEFAULT_MAX_DRY_RUN_DAYS = 14.0
DEFAULT_MAX_IDENTITIES_PER_DESTINATION = 3
Loc = tuple[str | int, ...]
_SCOPED = {("spec", "egress"), ("spec", "exceptions")}


def is_placeholder(text: str | None) -> bool:
    """Missing, blank, or a literal TODO (what `authz inventory --propose`
    writes for a person to fill in)."""
    return text is None or text.strip().casefold() in {"", "todo"}


def scope_of(loc: Loc) -> Loc:
    """The rule or exception a location lies in (``("spec", "egress", 2)``),
    or ``()`` for the policy as a whole."""
    return loc[:3] if loc[:2] in _SCOPED and len(loc) >= 3 else ()


@dataclass(frozen=True, slots=True)
class RuleUsage:
    """What a decision log says: the (policy, rule or exception id) pairs
    that some decision named between ``start`` and ``end`` (naive: UTC)."""

    used: frozenset[tuple[str, str]]
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class LintOptions:
    """``now`` (default the clock) judges expiry and ages; ``history`` (the
    policy files' git history, None when there is none) dates dry runs and
    exceptions; ``usage`` (None without a log) finds unused rules."""

    now: float | None = None
    max_exception_days: float = DEFAULT_MAX_EXCEPTION_DAYS
    max_dry_run_days: float = DEFAULT_MAX_DRY_RUN_DAYS
    max_identities_per_destination: int = DEFAULT_MAX_IDENTITIES_PER_DESTINATION
    history: Sequence[Revision] | None = None
    usage: RuleUsage | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """A warning at ``loc`` of a policy document, before silences."""

    loaded: Loaded[EgressPolicy]
    loc: Loc
    code: Code
    message: str

    @property
    def scope(self) -> Loc:
        return scope_of(self.loc)

    def problem(self) -> Problem:
        return self.loaded.source.problem(self.loc, self.message, "warning", self.code.value)
