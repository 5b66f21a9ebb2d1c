"""``lint``: every check, then the silences."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from authz.policy.errors import Problem
from authz.policy.history import Revision, exception_lives
from authz.policy.lint.across import set_findings
from authz.policy.lint.checks import Context, policy_findings
from authz.policy.lint.findings import Finding, LintOptions
from authz.policy.lint.silences import Silence, SilenceUse, apply_silences, find_silences, silence_errors
from authz.policy.load import PolicySet

__all__ = ["LintReport", "lint"]


@dataclass(frozen=True, slots=True)
class LintReport:
    """``warnings`` are those no silence covers (STALE_SILENCE among them);
    ``errors`` are bad silences (an unknown code): they fail a check."""

    warnings: tuple[Problem, ...]
    silenced: tuple[tuple[Problem, Silence], ...]
    silences: tuple[SilenceUse, ...]
    errors: tuple[Problem, ...]


def lint(policy_set: PolicySet, options: LintOptions | None = None) -> LintReport:
    options = options or LintOptions()
    now = time.time() if options.now is None else options.now
    context = Context(options, now, _exception_added(options.history))
    policies = policy_set.policies
    findings = [finding for loaded in policies for finding in policy_findings(loaded, context)]
    findings += set_findings(policies, options.max_identities_per_destination)
    silences = find_silences(policies)
    left, silenced, uses = apply_silences(findings, silences, context)
    order = {id(loaded): index for index, loaded in enumerate(policies)}

    def by_place(finding: Finding) -> tuple[int, int]:
        return order[id(finding.loaded)], finding.loaded.source.line(finding.loc)

    return LintReport(
        warnings=tuple(finding.problem() for finding in sorted(left, key=by_place)),
        silenced=tuple(
            (finding.problem(), silence)
            for finding, silence in sorted(silenced, key=lambda s: by_place(s[0]))
        ),
        silences=tuple(uses),
        errors=tuple(silence_errors(silences)),
    )


def _exception_added(history: Sequence[Revision] | None) -> Mapping[tuple[str, str], datetime]:
    """When each exception still open in the newest revision was added."""
    if history is None:
        return {}
    return {
        (life.policy, life.exception): life.added for life in exception_lives(history) if life.removed is None
    }
