"""Review lints: warnings for what is legal but deserves a reviewer's
second look, each with a stable code, silenced only with a stated reason."""

from authz.policy.lint.checks import WIDE_PORT_RANGE
from authz.policy.lint.codes import Code
from authz.policy.lint.findings import (
    DEFAULT_MAX_DRY_RUN_DAYS,
    DEFAULT_MAX_IDENTITIES_PER_DESTINATION,
    LintOptions,
    RuleUsage,
    is_placeholder,
)
from authz.policy.lint.report import LintReport, lint
from authz.policy.lint.silences import Silence, SilenceUse

__all__ = [
    "DEFAULT_MAX_DRY_RUN_DAYS",
    "DEFAULT_MAX_IDENTITIES_PER_DESTINATION",
    "WIDE_PORT_RANGE",
    "Code",
    "LintOptions",
    "LintReport",
    "RuleUsage",
    "Silence",
    "SilenceUse",
    "is_placeholder",
    "lint",
]
