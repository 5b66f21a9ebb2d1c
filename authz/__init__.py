"""egress-authz: identity-aware egress authorization for Envoy and Istio
zone egress gateways."""

from authz.core.compiled import CompiledPolicy
from authz.core.decision import Decision, Mode, Reason, Verdict
from authz.core.engine import Explanation, evaluate, explain
from authz.core.request import EgressRequest

__version__ = "0.1.0"

__all__ = [
    "CompiledPolicy",
    "Decision",
    "EgressRequest",
    "Explanation",
    "Mode",
    "Reason",
    "Verdict",
    "__version__",
    "evaluate",
    "explain",
]
