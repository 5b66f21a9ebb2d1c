"""bench/e2e_report.py's arithmetic (the benchmark itself is never run as a test)."""

from tests.paths import bench_module


def _point(config: str, run: int, p50: float, rps: float) -> dict[str, object]:
    return {"config": config, "rate": 500, "run": run, "rps": rps, "p50_ms": p50, "p90_ms": p50,
            "p99_ms": p50, "bad": 0.0}  # fmt: skip


def test_ratios_are_taken_within_a_run_then_the_median() -> None:
    """A slow run slows every configuration; same-run ratios leave that out."""
    records = [
        _point("rbac", 0, 1.0, 500), _point("authz-tcp", 0, 2.0, 500), _point("trivial", 0, 1.6, 500),
        _point("rbac", 1, 3.0, 500), _point("authz-tcp", 1, 6.0, 500), _point("trivial", 1, 4.8, 500),
        _point("rbac", 2, 1.1, 500), _point("authz-tcp", 2, 2.2, 500), _point("trivial", 2, 1.76, 500),
    ]  # fmt: skip
    row = bench_module("e2e_report").summarize(records)[("authz-tcp", 500)]
    assert row["p50_ms"] == 2.2  # the median over runs
    assert row["x_rbac_p50_ms"] == 2.0
    assert round(row["x_trivial_p50_ms"], 6) == 1.25
    assert row["x_rbac_rps"] == 1.0
