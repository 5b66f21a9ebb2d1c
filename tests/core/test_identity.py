import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.core.identity import InvalidSpiffeId, SpiffeId, parse_identity_pattern, parse_spiffe_id

TRUST_DOMAIN = st.text("abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=30)
SEGMENT = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_", min_size=1, max_size=20
).filter(lambda s: s not in (".", ".."))
VALID_IDS = st.builds(
    lambda td, path: "spiffe://" + td + "".join("/" + s for s in path),
    TRUST_DOMAIN,
    st.lists(SEGMENT, max_size=6),
)


def test_parses_a_workload_id() -> None:
    parsed = parse_spiffe_id("spiffe://prod.example.org/ns/payments/sa/payments-api")
    assert parsed == SpiffeId("prod.example.org", ("ns", "payments", "sa", "payments-api"))
    assert str(parsed) == "spiffe://prod.example.org/ns/payments/sa/payments-api"


def test_trust_domain_alone_is_an_id() -> None:
    assert parse_spiffe_id("spiffe://prod.example.org").path == ()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "scheme"),
        ("SPIFFE://prod.example.org/a", "scheme"),
        ("https://prod.example.org/a", "scheme"),
        ("spiffe:///a", "empty trust domain"),
        ("spiffe://Prod.example.org/a", "lower-case"),
        ("spiffe://prod.example.org:443/a", "port"),
        ("spiffe://user@prod.example.org/a", "user info"),
        ("spiffe://prod.example.org/", "empty path segment"),
        ("spiffe://prod.example.org/a//b", "empty path segment"),
        ("spiffe://prod.example.org/a/", "empty path segment"),
        ("spiffe://prod.example.org/a/./b", "'.'"),
        ("spiffe://prod.example.org/a/../b", "'..'"),
        ("spiffe://prod.example.org/a?x=1", "query"),
        ("spiffe://prod.example.org/a#frag", "fragment"),
        ("spiffe://prod.example.org/a%2Fb", "percent"),
        ("spiffe://prod.example.org/ü", "letters"),
        ("spiffe://" + "a" * 256 + "/x", "trust domain longer"),
        ("spiffe://a/" + "b" * 2048, "longer than 2048"),
    ],
)
def test_rejects_malformed_ids(text: str, complaint: str) -> None:
    with pytest.raises(InvalidSpiffeId, match=complaint):
        parse_spiffe_id(text)


def test_prefix_pattern_covers_ids_strictly_below_it() -> None:
    pattern = parse_identity_pattern("spiffe://prod.example.org/ns/payments/*")
    assert pattern.is_prefix
    assert pattern.key == "spiffe://prod.example.org/ns/payments"
    assert pattern.covers(parse_spiffe_id("spiffe://prod.example.org/ns/payments/sa/api"))
    assert not pattern.covers(parse_spiffe_id("spiffe://prod.example.org/ns/payments"))
    assert not pattern.covers(parse_spiffe_id("spiffe://prod.example.org/ns/payments-evil/sa/api"))
    assert not pattern.covers(parse_spiffe_id("spiffe://other.example.org/ns/payments/sa/api"))


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://prod.example.org/*",
        "spiffe://prod.example.org/ns/*/sa/x",
        "spiffe://prod.example.org/ns/pay*",
        "spiffe://prod.example.org/ns/payments/**",
    ],
)
def test_rejects_broad_or_inner_wildcards(text: str) -> None:
    with pytest.raises(InvalidSpiffeId):
        parse_identity_pattern(text)


@given(VALID_IDS)
def test_valid_ids_round_trip(text: str) -> None:
    parsed = parse_spiffe_id(text)
    assert str(parsed) == text
    assert parse_identity_pattern(text).covers(parsed)


@given(VALID_IDS)
def test_prefixes_are_the_covering_patterns_longest_first(text: str) -> None:
    parsed = parse_spiffe_id(text)
    keys = parsed.prefixes()
    assert len(keys) == max(len(parsed.path) - 1, 0)
    for key in keys:
        assert parse_identity_pattern(key + "/*").covers(parsed)
    assert keys == sorted(keys, key=len, reverse=True)


@given(st.text(max_size=80))
def test_parser_never_crashes_and_accepts_only_canonical_text(text: str) -> None:
    try:
        parsed = parse_spiffe_id(text)
    except InvalidSpiffeId:
        return
    assert str(parsed) == text
