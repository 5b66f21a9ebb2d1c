"""Problems found in policy files, each pinned to a file, a line and a field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["PolicyError", "Problem", "Severity", "format_field", "shorten"]

Severity = Literal["error", "warning"]


def shorten(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters: an error quotes a bad value, not megabytes of it."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def format_field(loc: Sequence[str | int]) -> str:
    """``("spec", "egress", 0, "hosts")`` as ``spec.egress[0].hosts``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    message: str
    field: str = ""
    severity: Severity = "error"
    code: str | None = None  # a lint warning's stable code (authz.policy.lint.Code)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: "
        if self.severity == "warning":
            where += "warning: "
        message = f"{self.code}: {self.message}" if self.code else self.message
        return where + (f"{self.field}: {message}" if self.field else message)


class PolicyError(Exception):
    """The policy files cannot be used; ``problems`` says where and why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(map(str, self.problems)))
