import re
from typing import Any

import pytest
from hypothesis import event, find, given, settings
from hypothesis import strategies as st

from authz.core.identity import InvalidSpiffeId, SpiffeId, parse_identity_pattern, parse_spiffe_id
from tests.finding import find_settings

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


# Text for the parser: arbitrary (none of 2,000 examples parsed), the grammar's own IDs, and the
# same spoiled by one edit: in the scheme, the trust domain or the path, a character at the grammar's
# edges or beyond it inserted or put in place of another, or a character dropped; or a path segment
# the grammar refuses added or put in place of another.
EDIT_CHARACTERS = st.sampled_from("/.%:@?#*-_ AZ\x00\n\u0430\u212a\uff0f") | st.characters(codec="utf-8")
BAD_SEGMENTS = st.sampled_from(["", ".", "..", "%2e", "*", "a b", "a?b", "a#b", "a:1", "\u0430", "a\x00"])
SCHEME = len("spiffe://")


@st.composite
def _spoiled(draw: st.DrawFn) -> str:
    text = draw(VALID_IDS)
    where = draw(st.sampled_from(["scheme", "trust domain", "path", "segment"]))
    if where == "segment":  # "spiffe:", "", the trust domain, then the path's segments
        parts = text.split("/")
        at = draw(st.integers(3, len(parts)))
        parts[at : at + draw(st.integers(0, 1))] = [draw(BAD_SEGMENTS)]
        return "/".join(parts)
    path = text.find("/", SCHEME) % (len(text) + 1)  # where the path begins (the end when there is none)
    start, end = {"scheme": (0, SCHEME), "trust domain": (SCHEME, path), "path": (path, len(text))}[where]
    at = draw(st.integers(start, end))
    inserted, dropped = draw(st.sampled_from([(True, False), (True, True), (False, True)]))
    return text[:at] + (draw(EDIT_CHARACTERS) if inserted else "") + text[at + dropped :]


TEXTS = st.one_of(st.text(max_size=80), VALID_IDS, _spoiled())
_SPIFFE_ID = re.compile(r"spiffe://([a-z0-9._-]{1,255})((?:/[A-Za-z0-9._-]+)*)")


def _expected(text: str) -> SpiffeId | None:
    """What the text must parse to, from the specification's grammar (not from the parser): None
    when it is no SPIFFE ID in canonical form."""
    match = _SPIFFE_ID.fullmatch(text)
    if match is None or len(text.encode("utf-8", "surrogatepass")) > 2048:
        return None
    path = tuple(match.group(2).split("/")[1:])
    return None if {".", ".."} & set(path) else SpiffeId(match.group(1), path)


# Cheap examples (microseconds each), and one edit among many: more of them than the default 100.
@settings(max_examples=max(500, settings.default.max_examples))
@given(TEXTS)
def test_parser_never_crashes_and_accepts_only_canonical_text(text: str) -> None:
    expected = _expected(text)
    event("a SPIFFE ID" if expected is not None else "refused")
    if expected is None:
        with pytest.raises(InvalidSpiffeId):
            parse_spiffe_id(text)
        return
    parsed = parse_spiffe_id(text)
    assert parsed == expected
    assert str(parsed) == text


# The first example found will do. Each comes up in 1 of 6 examples or more (measured over 3,000),
# so 2,000 examples miss one about once in e^360 runs.
FIND = find_settings(2000)


@pytest.mark.parametrize(
    "wanted",
    [
        pytest.param(lambda text: _expected(text) is not None, id="a SPIFFE ID"),
        pytest.param(lambda text: _expected(text) is not None and len(_expected(text).path) >= 2, id="a deep one"),
        pytest.param(lambda text: _expected(text) is None and text.startswith("spiffe://"), id="near-valid refused"),
        pytest.param(lambda text: _expected(text) is None and "spiffe" not in text, id="arbitrary text refused"),
    ],
)  # fmt: skip
def test_the_texts_reach_both_answers(wanted: Any) -> None:
    """The property above asserts something on both of its branches only if its texts reach them."""
    assert wanted(find(TEXTS, wanted, settings=FIND))
