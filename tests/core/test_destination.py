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
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example.", "xn--bcher-kva.example"),
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


# Names that IDNA/UTS-46 mapping folds into an ASCII name (or its A-label): a
# request naming them is refused, never matched as the name they map to.
UNICODE_HOSTS = [
    "registry.npmjs\u3002org",  # the ideographic full stop
    "registry\uff0enpmjs.org",  # the fullwidth full stop
    "\uff32\uff25\uff27\uff29\uff33\uff34\uff32\uff39.npmjs.org",  # fullwidth REGISTRY
    "registry.npmjs.or\u0261",  # Latin small letter script g
    "\u212a8s.example.com",  # the Kelvin sign, which str.lower() folds into "k"
    "github.com\u200b",  # a zero-width space, which UTS-46 drops
    "bücher.example",  # an honest IDN, sent in Unicode rather than as its A-label
    "\uff11\uff16\uff19.254.169.254",  # fullwidth digits of the metadata address
    "[fd00:ec2::\uff12\uff15\uff14]",
]


@pytest.mark.parametrize("text", UNICODE_HOSTS)
def test_a_request_host_that_is_not_plain_ascii_is_refused(text: str) -> None:
    with pytest.raises(InvalidHost, match="not plain ASCII"):
        normalize_host(text)


@given(st.text(min_size=1, max_size=40).filter(lambda text: not text.isascii()))
def test_no_text_that_is_not_plain_ascii_is_a_request_host(text: str) -> None:
    with pytest.raises(InvalidHost):
        normalize_host(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example.", "xn--bcher-kva.example"),
        ("*.bücher.example", "xn--bcher-kva.example"),
        ("\uff32\uff25\uff27\uff29\uff33\uff34\uff32\uff39.npmjs.org", "registry.npmjs.org"),
        ("registry.npmjs\u3002org", "registry.npmjs.org"),
    ],
)
def test_a_policy_may_name_a_host_in_unicode_and_it_compiles_to_the_a_label(text: str, value: str) -> None:
    assert parse_host_pattern(text).value == value


@pytest.mark.parametrize("text", ["xn--.example", "a\u200d.example", "\u0660\u06f0.example"])
def test_a_policy_host_idna_refuses_is_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidHost):
        parse_host_pattern(text)


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
