import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.core.destination import (
    InvalidHost,
    format_destination,
    normalize_host,
    parse_host_pattern,
    split_authority,
)

LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True)
NAMES = st.lists(LABEL, min_size=1, max_size=5).map(".".join)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("169.254.169.254", "169.254.169.254"),
        ("169.254.169.254.", "169.254.169.254"),
        ("[fd00:ec2::254]", "fd00:ec2::254"),
        ("FD00:EC2:0::254", "fd00:ec2::254"),
        ("::ffff:169.254.169.254", "169.254.169.254"),
        ("localhost", "localhost"),
    ],
)
def test_normalizes(text: str, canonical: str) -> None:
    assert normalize_host(text) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "a..b",
        "-a.com",
        "a-.com",
        "a_b.com",
        "a b.com",
        "a.com..",
        "x" * 64 + ".com",
        ("a." * 127) + "com",
        "2852039166",  # 169.254.169.254 as one decimal number
        "0xa9fea9fe",
        "0251.0376.0251.0376",  # octal
        "169.254.169",
        "[169.254.169.254]",
        "fe80::1%eth0",
        "[::1",
        "exa*mple.com",
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(InvalidHost):
        normalize_host(text)


@given(NAMES, st.data())
def test_case_and_trailing_dot_do_not_matter(name: str, data: st.DataObject) -> None:
    variant = "".join(c.upper() if data.draw(st.booleans()) else c for c in name)
    if data.draw(st.booleans()):
        variant += "."
    assert normalize_host(variant) == normalize_host(name) == name


@given(st.text(max_size=40))
def test_normalize_is_idempotent_and_never_crashes(text: str) -> None:
    try:
        canonical = normalize_host(text)
    except InvalidHost:
        return
    assert normalize_host(canonical) == canonical


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("registry.npmjs.org:10080", ("registry.npmjs.org", 10080)),
        ("registry.npmjs.org", ("registry.npmjs.org", None)),
        ("[fd00:ec2::254]:80", ("[fd00:ec2::254]", 80)),
        ("[fd00:ec2::254]", ("[fd00:ec2::254]", None)),
        ("fd00:ec2::254", ("fd00:ec2::254", None)),
    ],
)
def test_split_authority(authority: str, expected: tuple[str, int | None]) -> None:
    assert split_authority(authority) == expected


@pytest.mark.parametrize("authority", ["a.com:0", "a.com:65536", "a.com:http", "[::1]x", "[::1", "a.com:"])
def test_split_authority_rejects(authority: str) -> None:
    with pytest.raises(InvalidHost):
        split_authority(authority)


def test_format_destination_brackets_ipv6() -> None:
    assert format_destination("fd00:ec2::254", 80) == "[fd00:ec2::254]:80"
    assert format_destination("a.com", None) == "a.com"


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("API.example.com", "exact", "api.example.com"),
        ("*.api-provider.com", "wildcard", "api-provider.com"),
        ("10.0.0.0/8", "network", "10.0.0.0/8"),
        ("2001:db8::/32", "network", "2001:db8::/32"),
        ("10.1.2.3/32", "exact", "10.1.2.3"),
        ("fd00:ec2::254", "exact", "fd00:ec2::254"),
    ],
)
def test_host_patterns(text: str, kind: str, value: str) -> None:
    pattern = parse_host_pattern(text)
    assert (pattern.kind, pattern.value) == (kind, value)


@pytest.mark.parametrize(
    "text", ["*", "*.com", "a.*.com", "*a.com", "**.a.com", "*.10.0.0.1", "10.0.0.1/8", "10.0.0.0/33", ""]
)
def test_host_patterns_reject(text: str) -> None:
    with pytest.raises(InvalidHost):
        parse_host_pattern(text)
