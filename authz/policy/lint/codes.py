"""The lint codes: stable names a reviewer, a silence and a CI log share.
A code is never renamed or reused; README.md's table says what each means
and how to fix it."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Code"]


class Code(StrEnum):
    # A policy as a whole
    POLICY_WITHOUT_OWNER = "POLICY_WITHOUT_OWNER"  # owner is a placeholder (TODO or blank)
    POLICY_WITHOUT_CHANGE_REF = "POLICY_WITHOUT_CHANGE_REF"  # no change_ref (or a placeholder)
    POLICY_WITHOUT_RULES = "POLICY_WITHOUT_RULES"  # egress: [] denies its identities everything
    SNI_HOST_MISMATCH_ALLOWED = "SNI_HOST_MISMATCH_ALLOWED"  # domain fronting is not refused
    DRY_RUN_TOO_OLD = "DRY_RUN_TOO_OLD"  # in dry-run for longer than --max-dry-run-days
    # Who the policy is for
    IDENTITY_PREFIX = "IDENTITY_PREFIX"  # a namespace-wide (or wider) identity pattern
    PREFIX_OVERLAP = "PREFIX_OVERLAP"  # an exact ID also covered by another policy's prefix
    # What a rule or an exception allows
    RULE_WITHOUT_PURPOSE = "RULE_WITHOUT_PURPOSE"
    WILDCARD_DESTINATION = "WILDCARD_DESTINATION"
    CIDR_DESTINATION = "CIDR_DESTINATION"
    METADATA_ENDPOINT_RULE = "METADATA_ENDPOINT_RULE"
    WIDE_PORT_RANGE = "WIDE_PORT_RANGE"
    SHARED_DESTINATION = "SHARED_DESTINATION"  # more identities than --max-identities-per-destination
    UNUSED_RULE = "UNUSED_RULE"  # no decision named it in the log's last --unused-days
    # Break-glass exceptions
    EXCEPTION_WITHOUT_TICKET = "EXCEPTION_WITHOUT_TICKET"  # the ticket is a placeholder
    EXCEPTION_TOO_LONG = "EXCEPTION_TOO_LONG"  # open longer than the maximum, counted from its commit
    EXCEPTION_EXPIRED = "EXCEPTION_EXPIRED"
    # Silences
    STALE_SILENCE = "STALE_SILENCE"  # a silenced code that silences nothing (cannot itself be silenced)
