"""Every break-glass exception with its owner, ticket, expiry and time left:
the list a reviewer walks through before exceptions turn into standing
allowances."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from authz.policy.load import PolicySet

__all__ = ["ExceptionStatus", "exception_report"]

State = Literal["open", "expiring", "expired"]


@dataclass(frozen=True, slots=True)
class ExceptionStatus:
    policy: str
    id: str
    hosts: tuple[str, ...]
    ports: tuple[str, ...]
    owner: str
    reason: str
    ticket: str
    expires: str  # RFC 3339, as written
    seconds_left: float  # negative once expired
    state: State
    file: str
    line: int

    def to_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "id": self.id,
            "hosts": list(self.hosts),
            "ports": list(self.ports),
            "owner": self.owner,
            "reason": self.reason,
            "ticket": self.ticket,
            "expires": self.expires,
            "seconds_left": round(self.seconds_left),
            "state": self.state,
            "file": self.file,
            "line": self.line,
        }


def exception_report(policy_set: PolicySet, now: float, expiring_within: float) -> list[ExceptionStatus]:
    """Soonest expiry first; ``expiring`` when fewer than ``expiring_within`` seconds are left."""
    found: list[ExceptionStatus] = []
    for loaded in policy_set.policies:
        for index, exception in enumerate(loaded.model.spec.exceptions):
            left = exception.expires.timestamp() - now
            state: State = "expired" if left <= 0 else "expiring" if left < expiring_within else "open"
            found.append(
                ExceptionStatus(
                    policy=loaded.model.metadata.name,
                    id=exception.id,
                    hosts=tuple(map(str, exception.hosts)),
                    ports=tuple(
                        str(low) if low == high else f"{low}-{high}" for low, high in exception.ports
                    ),
                    owner=exception.owner,
                    reason=exception.reason,
                    ticket=exception.ticket,
                    expires=exception.expires.isoformat().replace("+00:00", "Z"),
                    seconds_left=left,
                    state=state,
                    file=loaded.source.file,
                    line=loaded.source.line(("spec", "exceptions", index)),
                )
            )
    return sorted(found, key=lambda status: status.seconds_left)
