"""The check-duration histogram, kept apart from the OTel SDK's.

On the check's own thread an OTel histogram's ``record()`` costs about 4 µs
(a tenth of a whole check on pyvoy); a bucket increment here about 0.3. The
buckets are for checks (25 µs to 1 s), where the SDK's defaults (0 to 10,000,
meant for milliseconds) put every check, in seconds, in the first one. It
reaches Prometheus through its own collector, beside the OTel exporter's.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["BOUNDS", "NAME", "CheckDurations"]

NAME = "egress_authz_check_duration_seconds"
#: Upper bounds (seconds, inclusive); above the last, +Inf.
BOUNDS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0)


class CheckDurations(Collector):
    """Counts by bucket and their sum. ``observe`` is called by the serving
    thread only; a scrape reads a snapshot (a count may lead its sum by one)."""

    def __init__(self) -> None:
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(BOUNDS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def cumulative(self) -> list[tuple[str, int]]:
        """(``le``, checks at or under it), the Prometheus way, ending with +Inf."""
        counts, total, out = list(self.buckets), 0, []
        for bound, count in zip((*map(str, BOUNDS), "+Inf"), counts, strict=True):
            total += count
            out.append((bound, total))
        return out

    def collect(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(
            NAME, "Time to decide a check, server side", buckets=self.cumulative(), sum_value=self.sum
        )
