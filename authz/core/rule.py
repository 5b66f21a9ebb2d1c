"""One compiled egress rule: which ports, and for HTTP which methods and
paths, it admits once its host has matched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from authz.core.destination import HostPattern

__all__ = ["PathPattern", "Rule", "parse_path_pattern", "parse_port_range", "request_path"]

PathKind = Literal["exact", "prefix", "suffix", "any"]

# Path text that an upstream may read differently from us (dot segments,
# encoded separators): a rule with path constraints never admits it.
_AMBIGUOUS_PATH_PARTS = ("/./", "/../", "%2f", "%5c", "%2e", "\\")


@dataclass(frozen=True, slots=True)
class PathPattern:
    """Istio's path forms: exact, ``/prefix/*``, ``*suffix``, or ``*``."""

    kind: PathKind
    value: str

    def matches(self, path: str) -> bool:
        if self.kind == "exact":
            return path == self.value
        if self.kind == "prefix":
            return path.startswith(self.value)
        if self.kind == "suffix":
            return path.endswith(self.value)
        return True

    def __str__(self) -> str:
        if self.kind == "prefix":
            return self.value + "*"
        if self.kind == "suffix":
            return "*" + self.value
        return "*" if self.kind == "any" else self.value


def parse_path_pattern(text: str) -> PathPattern:
    if text == "*":
        return PathPattern("any", "")
    if text.count("*") > 1 or ("*" in text and not (text.startswith("*") or text.endswith("*"))):
        raise ValueError(f"path {text!r}: '*' only as the whole path, a prefix's end or a suffix's start")
    if text.endswith("*"):
        prefix = text[:-1]
        if not prefix.startswith("/"):
            raise ValueError(f"path {text!r} must start with '/'")
        return PathPattern("prefix", prefix)
    if text.startswith("*"):
        return PathPattern("suffix", text[1:])
    if not text.startswith("/"):
        raise ValueError(f"path {text!r} must start with '/'")
    if "?" in text or "#" in text:
        raise ValueError(f"path {text!r}: no query or fragment (paths match without them)")
    return PathPattern("exact", text)


def parse_port_range(value: int | str) -> tuple[int, int]:
    """A port (``443``) or an inclusive range (``"8000-8999"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and value.count("-") == 1:
        low_text, high_text = (part.strip() for part in value.split("-"))
        if not (low_text.isdigit() and high_text.isdigit()):
            raise ValueError(f"port range {value!r} must be 'LOW-HIGH'")
        low, high = int(low_text), int(high_text)
        if low > high:
            raise ValueError(f"port range {value!r} runs backwards")
    elif isinstance(value, str) and value.strip().isdigit():
        low = high = int(value)
    else:
        raise ValueError(f"port {value!r} must be a number or a 'LOW-HIGH' range")
    if low < 1 or high > 65535:
        raise ValueError(f"port {value!r} out of range 1-65535")
    return low, high


def request_path(path: str) -> str | None:
    """The path to match (query and fragment cut off), or None when it is not
    an absolute path or an upstream might resolve it to another one."""
    for mark in "?#":
        cut = path.find(mark)
        if cut >= 0:
            path = path[:cut]
    if not path.startswith("/"):
        return None
    if "%" in path or "\\" in path or "/." in path:  # the rare paths worth a closer look
        lowered = path.lower()
        if any(part in lowered for part in _AMBIGUOUS_PATH_PARTS) or lowered.endswith(("/.", "/..")):
            return None
    return path


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """``ports`` holds single ports, ``port_ranges`` inclusive ranges;
    ``port_text`` shows both as written, for explanations.

    A break-glass exception is a rule with ``expires`` (seconds since the
    epoch), an ``owner`` and a ``ticket``; it admits nothing from that instant on.
    """

    id: str
    policy: str
    hosts: tuple[HostPattern, ...]
    ports: frozenset[int]
    port_ranges: tuple[tuple[int, int], ...]
    port_text: str
    methods: frozenset[str] | None
    paths: tuple[PathPattern, ...] | None
    purpose: str | None
    expires: float | None = None
    owner: str | None = None
    ticket: str | None = None

    def why_not(self, port: int | None, method: str | None, path: str | None) -> str | None:
        """None when the rule admits the request (its host has matched), else why not."""
        if port not in self.ports:
            if port is None:
                return "the request has no port and its scheme has no default port"
            for low, high in self.port_ranges:
                if low <= port <= high:
                    break
            else:
                return f"port {port} is not one of {self.port_text}"
        methods, paths = self.methods, self.paths
        if methods is None and paths is None:
            return None
        if method is None:
            return "the rule has HTTP constraints and the request is not HTTP"
        if (
            methods is not None
            and method not in methods
            and not (method.isascii() and method.upper() in methods)
        ):
            return f"method {method} is not one of {', '.join(sorted(methods))}"
        if paths is not None:
            if path is None:
                return "the rule constrains paths and the request has none"
            matchable = request_path(path)
            if matchable is None:
                return f"path {path!r} is not absolute, or has dot segments or encoded separators"
            for pattern in paths:
                if pattern.matches(matchable):
                    return None
            return f"path {matchable} matches none of {', '.join(map(str, paths))}"
        return None
