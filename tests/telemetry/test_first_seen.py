import logging

import pytest

from authz.telemetry import FirstSeen
from tests.telemetry.helpers import CI, Recorded, decide


def test_first_seen_destination_is_an_event_and_a_log_record_once(
    always: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="authz.first_seen"):
        for _ in range(3):
            always.record(*decide(CI, "github.com"))
    events = [[event.name for event in span.events] for span in always.finished()]
    assert events == [["first_seen_destination"], [], []]
    (message,) = [r.getMessage() for r in caplog.records if r.name == "authz.first_seen"]
    assert message.startswith(f"first_seen_destination identity={CI} destination=github.com:443")


def test_first_seen_memory_is_bounded() -> None:
    seen = FirstSeen(capacity=2)
    assert [seen.first("a", d, 443) for d in ("x", "y", "x", "z")] == [True, True, False, True]
    assert seen.first("a", "y", 443)  # evicted by z, reported again
    assert seen.first("a", "z", 80)  # another port is another destination
    assert len(seen._seen) == 2


def test_the_pairs_used_since_the_last_look_most_recent_first() -> None:
    seen = FirstSeen(capacity=10)
    for host in ("a", "b", "c"):
        seen.first("i", host, 443)
    assert [key[1] for key in seen.used_since_last_look()] == ["c", "b", "a"]  # the first look: all
    assert seen.used_since_last_look() == []
    seen.first("i", "a", 443)  # used again
    seen.first("i", "d", 443, "eu")  # new
    assert seen.used_since_last_look() == [("i", "d", 443, "eu"), ("i", "a", 443, None)]
    assert not seen.first("i", "b", 443)  # the mark is no pair
