"""Byte-mutation fuzzing: real serialized CheckRequests of the example
policies' tests (allowed and denied), with bytes flipped, inserted, deleted,
overwritten or cut off, go through CheckService. Never a crash, and never an
allow the policy does not grant (tests/ext_authz/oracle.py); bytes that are
no CheckRequest are INVALID_ARGUMENT."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.ext_authz.check import INVALID_ARGUMENT, MAX_MESSAGE_BYTES, OK, RESOURCE_EXHAUSTED
from authz.ext_authz.wire.ext_authz_pb2 import CheckResponse
from tests.ext_authz.fuzzing import FUZZ, HANG_SECONDS, ORACLE, SEEDS, SERVICE

pytestmark = [
    pytest.mark.timeout(HANG_SECONDS),
    pytest.mark.filterwarnings(
        "ignore:Generating overly large repr"
    ),  # a request with 70,000-character headers
]

INTERESTING = [
    b"\x00",
    b"\xff",
    b"\x80",
    b"\x7f",
    b"\xff\xff\xff\xff\x0f",
    b"\xc0\x80",
    b"\xed\xa0\x80",
    b"\x0a",
    b"\x12",
]
OPERATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**16), st.integers(0, 7)),
    st.tuples(st.just("insert"), st.integers(0, 2**16), st.binary(min_size=1, max_size=8) | st.sampled_from(INTERESTING)),
    st.tuples(st.just("delete"), st.integers(0, 2**16), st.integers(1, 16)),
    st.tuples(st.just("overwrite"), st.integers(0, 2**16), st.sampled_from(INTERESTING)),
    st.tuples(st.just("truncate"), st.integers(0, 2**16), st.just(0)),
    st.tuples(st.just("splice"), st.integers(0, 2**16), st.sampled_from(SEEDS)),
)  # fmt: skip


Operation = tuple[str, int, int | bytes]


def mutate(data: bytes, operations: list[Operation]) -> bytes:
    """``data`` with each operation applied in turn (positions wrap around its length)."""
    for name, where, what in operations:
        at = where % (len(data) + 1)
        count = what if isinstance(what, int) else len(what)
        chunk = what if isinstance(what, bytes) else b""
        if name == "flip" and data:
            at %= len(data)
            data = data[:at] + bytes([data[at] ^ (1 << count)]) + data[at + 1 :]
        elif name == "insert":
            data = data[:at] + chunk + data[at:]
        elif name in ("delete", "overwrite"):
            data = data[:at] + chunk + data[at + count :]
        elif name == "truncate":
            data = data[:at]
        elif name == "splice":  # the tail of another request (from a field boundary or not) in the middle
            data = data[:at] + chunk[at % (len(chunk) + 1) :]
    return data


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(OPERATIONS, min_size=1, max_size=6))
def test_mutated_requests_never_crash_and_never_allow_what_is_not_granted(
    seed: bytes, operations: list[Operation]
) -> None:
    data = mutate(seed, operations)
    outcome = SERVICE.check(data, None)
    ORACLE.judge(data, outcome)


def test_the_seeds_are_allowed_and_denied() -> None:
    verdicts = {CheckResponse.FromString(SERVICE.check(seed, None).body).status.code == 0 for seed in SEEDS}
    assert verdicts == {True, False}


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\xff\xff\xff", INVALID_ARGUMENT),  # not protobuf
        (b"\x0a\x05\x0a\x03\x22\x01\xff", INVALID_ARGUMENT),  # the principal: a string of invalid UTF-8
        (b"\x0a\x80\x80\x80\x80\x10", INVALID_ARGUMENT),  # a length past the end
        (b"", OK),  # the empty CheckRequest: every field missing, denied NO_IDENTITY
        (b"\x0a\x00" * 1000, OK),  # one field a thousand times: the last wins
    ],
)
def test_odd_bytes_get_a_status_and_no_allow(data: bytes, status: int) -> None:
    outcome = SERVICE.check(data, None)
    assert outcome.status == status
    decision = ORACLE.judge(data, outcome)
    assert decision is None or not decision.allowed


def test_bytes_over_the_message_limit_are_refused_unread() -> None:
    data = SEEDS[0] + b"\x00" * MAX_MESSAGE_BYTES
    outcome = SERVICE.check(data, None)
    assert (outcome.status, outcome.body) == (RESOURCE_EXHAUSTED, b"")
    assert SERVICE.check(SEEDS[0], None).status == OK
