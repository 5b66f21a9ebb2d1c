"""YAML to plain data, remembering the line of every key and item.

Built on the libyaml event stream rather than PyYAML's composer: the composer
recurses (deeply nested input crashes the C one) and accepts aliases (a
billion-laughs bomb) and duplicate keys; policy files need none of that.
Numbers are read only up to MAX_NUMBER_LENGTH characters: YAML 1.1's
base-60 integers (``1:2:3``) cost PyYAML time quadratic in their length
(an hour for a 4 MiB one), and Python refuses integers of over 4,300 digits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from authz.policy.errors import shorten

__all__ = ["MAX_DEPTH", "MAX_NUMBER_LENGTH", "Loc", "YamlDocument", "YamlError", "read_documents"]

MAX_DEPTH = 32
MAX_NUMBER_LENGTH = 64  # characters of an int or float scalar: ports and counts need a few
Loc = tuple[str | int, ...]

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_resolver: Any = yaml.resolver.Resolver()
_constructor = yaml.constructor.SafeConstructor()
_COLLECTION_TAGS = {None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"}
_NUMBER_TAGS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_SHOWN = 60  # characters of a bad value quoted in an error
_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"
# The libyaml that PyYAML 6.0.4 bundles (6.0.3 and older have no limit) refuses flow collections over
# 1,000 deep while scanning. Its scanner reads a whole flow collection ahead (for simple keys), so that
# error comes before the parser has yielded the 33rd start event that our own count refuses. Either way
# the reader gets one message, ours, at the line libyaml gives.
_LIBYAML_DEPTH = "maximum nesting depth"


class YamlError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}")


@dataclass(slots=True)
class YamlDocument:
    data: Any
    line: int
    lines: dict[Loc, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Open:
    """A mapping or sequence being filled, and where it sits."""

    value: dict[str, Any] | list[Any]
    loc: Loc
    key: str | None = None  # a mapping's pending key
    key_line: int = 0


def _line(event: Any) -> int:
    return int(event.start_mark.line) + 1


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _shown(value: object) -> str:
    return shorten(repr(value), _SHOWN)


def _scalar(event: Any) -> Any:
    tag = event.tag
    if tag is None or tag == "!":
        tag = _resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
    if tag in _NUMBER_TAGS and len(event.value) > MAX_NUMBER_LENGTH:
        raise YamlError(
            _line(event), f"a number longer than {MAX_NUMBER_LENGTH} characters: {_shown(event.value)}"
        )
    node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
    try:
        return _constructor.construct_object(node)
    except Exception as exc:  # PyYAML's constructors raise what they meet: a date 2026-13-45, `!!bool maybe`
        raise YamlError(_line(event), f"cannot read {_shown(event.value)}: {_first_line(exc)}") from None
    finally:  # the constructor remembers each node it built (for aliases): a server rereading its files
        _constructor.constructed_objects.pop(node, None)  # would keep every scalar, and its marks, for good
        _constructor.recursive_objects.pop(node, None)


def _events(text: str) -> Iterator[Any]:
    try:
        yield from yaml.parse(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        if _LIBYAML_DEPTH in str(exc.problem):  # libyaml's own limit (1,000) is past ours: say ours
            raise YamlError(line, _TOO_DEEP) from None
        raise YamlError(line, f"not valid YAML: {exc.problem or exc}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: its position, not a mark
        line = text.count("\n", 0, exc.position) + 1
        raise YamlError(line, f"not valid YAML: {_first_line(exc)}") from None
    except yaml.YAMLError as exc:
        raise YamlError(1, f"not valid YAML: {_first_line(exc)}") from None


def read_documents(text: str) -> list[YamlDocument]:
    """Every document in ``text``; raises YamlError (with a line) on bad input."""
    documents: list[YamlDocument] = []
    stack: list[_Open] = []
    document: YamlDocument | None = None

    def place(value: Any, line: int) -> Loc | None:
        """Put a finished value where it belongs; return its location."""
        nonlocal document
        if not stack:
            document = YamlDocument(value, line)
            documents.append(document)
            document.lines[()] = line
            return ()
        parent = stack[-1]
        assert document is not None
        if isinstance(parent.value, list):
            loc = (*parent.loc, len(parent.value))
            parent.value.append(value)
            document.lines.setdefault(loc, line)
            return loc
        if parent.key is None:
            if not isinstance(value, str):
                raise YamlError(line, f"mapping keys must be strings, not {_shown(value)}")
            if value in parent.value:
                raise YamlError(line, f"duplicate key {_shown(value)}")
            parent.key, parent.key_line = value, line
            return None
        loc = (*parent.loc, parent.key)
        parent.value[parent.key] = value
        document.lines.setdefault(loc, parent.key_line)
        parent.key = None
        return loc

    for event in _events(text):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise YamlError(_line(event), "anchors and aliases are not supported in policy files")
        if isinstance(event, yaml.ScalarEvent):
            place(_scalar(event), _line(event))
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            if event.tag not in _COLLECTION_TAGS:
                raise YamlError(_line(event), f"unsupported tag {event.tag!r}")
            if len(stack) >= MAX_DEPTH:
                raise YamlError(_line(event), _TOO_DEEP)
            container: dict[str, Any] | list[Any] = {} if isinstance(event, yaml.MappingStartEvent) else []
            loc = place(container, _line(event))
            if loc is None:
                raise YamlError(_line(event), "mapping keys must be strings, not collections")
            stack.append(_Open(container, loc))
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            stack.pop()
    return documents
