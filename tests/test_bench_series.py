"""bench/series.py on a few generated policies (the 10,000-policy run is the
README's figure): each policy with traffic adds its decisions' series and one
first-seen series, whatever the number of identities and destinations."""

from __future__ import annotations

from pathlib import Path

from tests.paths import bench_module


def test_the_series_grow_with_policies_not_with_identities_or_destinations(tmp_path: Path) -> None:
    series = bench_module("series")
    policies, requests = series.generated(tmp_path, 30)
    assert len(requests) == 2 * 30 + 1  # an allowed check and an unknown destination each, one exception use
    found = series.measure(policies, [*requests, *requests])[0]  # the same checks twice: no new series
    assert found["egress_authz_decisions"] == 2 * 30 + 1
    assert found["egress_authz_first_seen_destinations"] == 30
    assert found["egress_authz_exception_expiry_timestamp_seconds"] == 1
    assert found["egress_authz_check_duration_seconds"] == 17  # 14 bounds, +Inf, sum, count
    assert found["all"] > found["egress_authz"] > 30 * 3
