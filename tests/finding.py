"""Settings for ``hypothesis.find``: a test that shows a strategy reaches a branch
its property asserts on. The first example found will do (no shrinking, no
database), and it may take as long as it takes."""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings


def find_settings(max_examples: int) -> settings:
    """``max_examples`` tries: choose it so that the rarest branch is missed once in e^20 runs or less."""
    return settings(
        phases=[Phase.generate],
        database=None,
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
