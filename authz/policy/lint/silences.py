"""Silences: ``lint: {ignore: [CODE...], reason: "..."}`` under a policy's
``metadata`` (the whole policy: its own warnings, its rules' and its
exceptions'), on a rule, or on an exception. A silenced warning is not
reported but stays on record (``authz check --silenced``); a code that
silences nothing is itself a warning, STALE_SILENCE, unless the clock or
data not given this time may yet raise it there."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from authz.core.decision import Mode
from authz.policy.errors import Problem
from authz.policy.lint.checks import Context
from authz.policy.lint.codes import Code
from authz.policy.lint.findings import Finding, Loc, is_placeholder
from authz.policy.load import Loaded
from authz.policy.model import EgressException, EgressPolicy, LintSilence

__all__ = ["Silence", "SilenceUse", "apply_silences", "find_silences", "silence_errors"]

_KNOWN = frozenset(Code)


@dataclass(frozen=True, slots=True)
class Silence:
    """One ``lint:`` block; ``scope`` is ``()`` for the policy, or the
    rule's or exception's location (``("spec", "egress", 2)``)."""

    loaded: Loaded[EgressPolicy]
    scope: Loc
    target: str  # "payments-api", "payments-api/kms", "payments-api/backup (exception)"
    codes: tuple[str, ...]
    reason: str

    @property
    def loc(self) -> Loc:
        return (*self.scope, "lint") if self.scope else ("metadata", "lint")

    @property
    def file(self) -> str:
        return self.loaded.source.file

    @property
    def line(self) -> int:
        return self.loaded.source.line(self.loc)


@dataclass(slots=True)
class SilenceUse:
    """A silence and what it did: warnings silenced per code; codes that
    silenced nothing (stale), or nothing yet (pending: the clock or data not
    given this run may still raise them)."""

    silence: Silence
    silenced: dict[str, int] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)


def find_silences(policies: Iterable[Loaded[EgressPolicy]]) -> list[Silence]:
    found: list[Silence] = []

    def add(loaded: Loaded[EgressPolicy], scope: Loc, target: str, block: LintSilence | None) -> None:
        if block is not None:
            found.append(Silence(loaded, scope, target, tuple(block.ignore), block.reason))

    for loaded in policies:
        policy = loaded.model
        name = policy.metadata.name
        add(loaded, (), name, policy.metadata.lint)
        for index, rule in enumerate(policy.spec.egress):
            add(loaded, ("spec", "egress", index), f"{name}/{rule.id}", rule.lint)
        for index, exception in enumerate(policy.spec.exceptions):
            add(loaded, ("spec", "exceptions", index), f"{name}/{exception.id} (exception)", exception.lint)
    return found


def silence_errors(silences: Iterable[Silence]) -> list[Problem]:
    """An unknown code, STALE_SILENCE, a code listed twice, a TODO reason:
    errors at their lines, whatever ``--strict`` says."""
    problems: list[Problem] = []
    for silence in silences:
        source = silence.loaded.source
        if is_placeholder(silence.reason):
            problems.append(
                source.problem((*silence.loc, "reason"), "a silence needs a stated reason, not TODO")
            )
        for index, code in enumerate(silence.codes):
            loc = (*silence.loc, "ignore", index)
            if code == Code.STALE_SILENCE:
                message = "STALE_SILENCE cannot be silenced: remove the code that silences nothing"
            elif code not in _KNOWN:
                close = difflib.get_close_matches(code, list(_KNOWN), n=1)
                message = f"unknown lint code {code!r}" + (f" (did you mean {close[0]}?)" if close else "")
            elif code in silence.codes[:index]:
                message = f"{code} is listed twice"
            else:
                continue
            problems.append(source.problem(loc, message))
    return problems


def apply_silences(
    findings: Sequence[Finding], silences: Sequence[Silence], context: Context
) -> tuple[list[Finding], list[tuple[Finding, Silence]], list[SilenceUse]]:
    """The findings left, the silenced ones with their silence, and each
    silence's use (STALE_SILENCE findings are among those left)."""
    uses = {id(silence): SilenceUse(silence) for silence in silences}
    by_scope: dict[tuple[int, Loc], list[Silence]] = {}
    for silence in silences:
        by_scope.setdefault((id(silence.loaded), silence.scope), []).append(silence)
    left: list[Finding] = []
    silenced: list[tuple[Finding, Silence]] = []
    for finding in findings:
        policy = id(finding.loaded)  # the rule's or exception's own silence first, then the policy's
        candidates = (*by_scope.get((policy, finding.scope), ()), *by_scope.get((policy, ()), ()))
        match = next((silence for silence in candidates if finding.code in silence.codes), None)
        if match is None:
            left.append(finding)
            continue
        silenced.append((finding, match))
        counts = uses[id(match)].silenced
        counts[finding.code] = counts.get(finding.code, 0) + 1
    for silence in silences:
        use = uses[id(silence)]
        for index, code in enumerate(silence.codes):
            if code in use.silenced or code not in _KNOWN or code == Code.STALE_SILENCE:
                continue
            if _may_fire_later(silence, Code(code), context):
                use.pending.append(code)
                continue
            use.stale.append(code)
            left.append(
                Finding(
                    silence.loaded,
                    (*silence.loc, "ignore", index),
                    Code.STALE_SILENCE,
                    f"{code} silences nothing on {silence.target}: remove it from the silence",
                )
            )
    return left, silenced, list(uses.values())


def _may_fire_later(silence: Silence, code: Code, context: Context) -> bool:
    """Codes the clock, or data not given this run, may yet raise where the
    silence stands: silencing them ahead is not stale."""
    spec = silence.loaded.model.spec
    kind = silence.scope[1] if silence.scope else None
    exceptions: list[EgressException] = (
        [spec.exceptions[int(silence.scope[2])]]
        if kind == "exceptions"
        else []
        if kind == "egress"
        else list(spec.exceptions)
    )
    name = silence.loaded.model.metadata.name
    if code == Code.EXCEPTION_EXPIRED:
        return any(exception.expires.timestamp() > context.now for exception in exceptions)
    if code == Code.EXCEPTION_TOO_LONG:  # dated by git: unknown without history, or before the commit
        return any((name, exception.id) not in context.exception_added for exception in exceptions)
    if code == Code.DRY_RUN_TOO_OLD:
        return kind is None and spec.mode == Mode.DRY_RUN
    if code == Code.UNUSED_RULE:
        return context.options.usage is None
    return False
