from tests.telemetry.helpers import CI, PARENT_ID, PARTNER, TRACE_ID, Recorded, decide


def test_denies_are_always_recorded_allows_follow_the_sampler(never_allows: Recorded) -> None:
    never_allows.record(*decide(CI, "github.com"))  # allow: sampled out
    never_allows.record(*decide(CI, "pastebin.com"))  # deny
    never_allows.record(*decide(PARTNER, "pastebin.com"))  # dry-run would-deny
    unsampled_parent = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
    never_allows.record(*decide(CI, "pastebin.com"), unsampled_parent)  # deny in an unsampled trace
    spans = never_allows.finished()
    assert [dict(s.attributes or {})["egress_authz.reason"] for s in spans] == [
        "NO_MATCHING_RULE",
        "DRY_RUN",
        "NO_MATCHING_RULE",
    ]
    assert format(spans[2].context.trace_id, "032x") == TRACE_ID
