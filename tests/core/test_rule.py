import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.core.rule import parse_path_pattern, parse_port_range, request_path
from authz.testing import compile_documents, policy_document


def _rule(**fields: object):  # type: ignore[no-untyped-def]
    document = policy_document(
        "svc", ["spiffe://td.example/ns/a/sa/b"], [{"id": "r", "hosts": ["a.example.com"], **fields}]
    )
    return compile_documents(document).services[0].rules[0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(443, (443, 443)), ("8000-8100", (8000, 8100)), ("22", (22, 22)), ("1-65535", (1, 65535))],
)
def test_port_ranges(value: int | str, expected: tuple[int, int]) -> None:
    assert parse_port_range(value) == expected


@pytest.mark.parametrize("value", [0, 65536, "9-1", "a-b", "1-2-3", True, 4.5, "", None])
def test_port_ranges_reject(value: object) -> None:
    with pytest.raises(ValueError, match="port"):
        parse_port_range(value)  # type: ignore[arg-type]


def test_rule_admits_listed_ports_and_ranges_only() -> None:
    rule = _rule(ports=[443, "8000-8100"])
    assert rule.why_not(443, None, None) is None
    assert rule.why_not(8050, None, None) is None
    assert rule.why_not(8101, None, None) == "port 8101 is not one of 443, 8000-8100"
    assert "no port" in (rule.why_not(None, None, None) or "")


def test_http_constraints_never_match_a_tcp_request() -> None:
    rule = _rule(ports=[443], http={"methods": ["post"]})
    assert rule.why_not(443, "POST", "/") is None
    assert rule.why_not(443, "GET", "/") is not None
    assert rule.why_not(443, None, None) == "the rule has HTTP constraints and the request is not HTTP"


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/v1/payments/*", "/v1/payments/abc", True),
        ("/v1/payments/*", "/v1/payments/abc/def?x=1", True),
        ("/v1/payments/*", "/v1/payments", False),
        ("/v1/payments/*", "/v1/paymentsX", False),
        ("/health", "/health", True),
        ("/health", "/health?verbose=1", True),
        ("/health", "/health/", False),
        ("*.tgz", "/pkg/-/pkg-1.0.0.tgz", True),
        ("*", "/anything", True),
        ("/v1/payments/*", "/v1/payments/../admin", False),
        ("/v1/payments/*", "/v1/payments/%2e%2e/admin", False),
        ("/v1/payments/*", "/v1/payments/a%2Fb", False),
        ("/v1/payments/*", "/v1/payments/..", False),
        ("/v1/payments/*", "/v1/payments\\..\\admin", False),
    ],
)
def test_path_patterns(pattern: str, path: str, matches: bool) -> None:
    rule = _rule(ports=[443], http={"paths": [pattern]})
    assert (rule.why_not(443, "GET", path) is None) is matches


@pytest.mark.parametrize("text", ["v1/*", "/a/*/b", "**", "/a?b=1", "/a#x", "/*a*"])
def test_path_patterns_reject(text: str) -> None:
    with pytest.raises(ValueError, match="path"):
        parse_path_pattern(text)


@given(st.text(alphabet="/abc.%2?#\\", max_size=30))
def test_request_path_cuts_query_and_refuses_dot_segments(path: str) -> None:
    result = request_path(path)
    if result is None:
        return
    assert "?" not in result
    assert "#" not in result
    segments = result.split("/")
    assert ".." not in segments
    assert "." not in segments[1:]
    assert not any(encoded in result.lower() for encoded in ("%2e", "%2f", "%5c"))
    assert "\\" not in result
