"""The shadow policy: a candidate policy set that every check is also
evaluated against, after its answer is on its way (in the telemetry queue),
so that what the candidate would change is seen on live traffic before it
is enforced. Its outcome is recorded (span, decision log, metrics), never
answered.

The shadow answers as a check would have with the candidate in force: the
same request at the same instant, in the candidate files' own modes (a
zone-wide ``--mode dry-run`` is the served policy's alone). A check denied
without a policy evaluation (NO_POLICY, TIMEOUT, INTERNAL_ERROR) gets the
same deny from the shadow, and an evaluation that raises is a deny
INTERNAL_ERROR, as on the check. The shadow *disagrees* when its ``verdict``
(what would be enforced) differs from the served one.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import NamedTuple

from authz.core.compiled import CompiledPolicy
from authz.core.decision import Decision, Reason, Verdict
from authz.core.engine import evaluate, fail_closed
from authz.core.request import EgressRequest

__all__ = ["NOT_EVALUATED", "Shadow", "ShadowOutcome"]

#: The served decision's reasons for which no policy was consulted: the
#: candidate would have been denied the same way.
NOT_EVALUATED = frozenset({Reason.NO_POLICY, Reason.TIMEOUT, Reason.INTERNAL_ERROR})
log = logging.getLogger("authz.shadow")


class ShadowOutcome(NamedTuple):
    decision: Decision  # the candidate set's
    disagrees: bool  # its verdict is not the served one


class Shadow:
    """The candidate set in force (``policy``, swapped whole by its reloader;
    None: no shadow), and what it decided, counted for the metrics. Called
    by the telemetry's one processing lock at a time."""

    def __init__(self) -> None:
        self.policy: CompiledPolicy | None = None
        self.checks: Counter[str] = Counter()  # agree, disagree, error (the evaluation raised)
        # (served verdict, shadow verdict, shadow reason, policy, owner) of each disagreement: the
        # candidate's policy that decided, else the served one's (an identity the candidate dropped)
        self.disagreements: Counter[tuple[Verdict, Verdict, Reason, str, str]] = Counter()
        self._failing_version: str | None = None  # an error is logged once a candidate version

    def decide(
        self, decision: Decision, request: EgressRequest | None, started_ns: int
    ) -> ShadowOutcome | None:
        """The candidate's outcome for the check that ``decision`` answered; None without a candidate."""
        policy = self.policy
        if policy is None:
            return None
        version = policy.version
        result = "agree"
        if decision.reason in NOT_EVALUATED or request is None:
            shadow = fail_closed(decision.reason, decision.detail, version, request)
        else:
            try:
                shadow = evaluate(policy, request, started_ns / 1e9)
            except Exception:
                result = "error"
                if self._failing_version != version:
                    self._failing_version = version
                    log.exception("shadow policy %s failed on a check; counted as INTERNAL_ERROR", version)
                shadow = fail_closed(Reason.INTERNAL_ERROR, "internal error", version, request)
        disagrees = shadow.verdict is not decision.verdict
        if disagrees:
            named = shadow if shadow.policy else decision
            self.disagreements[
                (decision.verdict, shadow.verdict, shadow.reason, named.policy or "", named.owner or "")
            ] += 1
            result = "disagree" if result == "agree" else result
        self.checks[result] += 1
        return ShadowOutcome(shadow, disagrees)
