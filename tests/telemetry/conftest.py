from collections.abc import Iterator

import pytest

from tests.telemetry.helpers import Recorded


@pytest.fixture
def always() -> Iterator[Recorded]:
    recorded = Recorded({"OTEL_TRACES_SAMPLER": "always_on"})
    yield recorded
    recorded.telemetry.shutdown()


@pytest.fixture
def never_allows() -> Iterator[Recorded]:
    recorded = Recorded({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"})
    yield recorded
    recorded.telemetry.shutdown()
