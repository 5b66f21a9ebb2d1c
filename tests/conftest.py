"""Hypothesis profiles: hypothesis's own default for `make test`, and ``fuzz``
for `make fuzz` (HYPOTHESIS_PROFILE=fuzz): many more examples, no deadline."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])

from tests.redis_server import redis_server  # noqa: E402, F401 - the real redis-server, for any test that asks
