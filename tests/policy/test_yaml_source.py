import datetime
import gc

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from authz.policy.yaml_source import MAX_DEPTH, YamlError, read_documents
from tests.paths import EXAMPLES


def test_reads_documents_with_the_line_of_every_key_and_item() -> None:
    (first, second) = read_documents("a: 1\nb:\n  - x: [1, 2]\n    y: 2026-01-01\n  - s\n---\nc: yes\n")
    assert first.data == {"a": 1, "b": [{"x": [1, 2], "y": datetime.date(2026, 1, 1)}, "s"]}
    assert first.lines[("a",)] == 1
    assert first.lines[("b",)] == 2
    assert first.lines[("b", 0)] == 3
    assert first.lines[("b", 0, "y")] == 4
    assert first.lines[("b", 1)] == 5
    assert second.data == {"c": True}
    assert second.lines[("c",)] == 7


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a: 1\na: 2\n", 2, "duplicate key 'a'"),
        ("a: &x [1]\nb: *x\n", 1, "anchors and aliases"),
        ("a: !!python/object:os.system x\n", 1, "cannot read"),
        ("a: !custom {b: 1}\n", 1, "unsupported tag"),
        ("{a: [}\n", 1, "not valid YAML"),
        ("a: 1\n  b: 2\n", 2, "not valid YAML"),
        ("1: one\n", 1, "keys must be strings"),
        ("? [1]\n: 2\n", 1, "keys must be strings"),
        ("[" * 100_000 + "]" * 100_000, 1, f"deeper than {MAX_DEPTH}"),
        ("a: \x00\n", 1, "not valid YAML"),
        ("a: 1\nwhen: 2026-13-45\n", 2, "cannot read '2026-13-45': month must be in 1..12"),
    ],
)
def test_bad_yaml_is_a_clear_error_with_a_line(text: str, line: int, message: str) -> None:
    with pytest.raises(YamlError, match=message) as caught:
        read_documents(text)
    assert caught.value.line == line
    assert "\n" not in caught.value.message


_BLOCK_40_DEEP = (
    "a:\n" + "".join("  " * depth + f"k{depth}:\n" for depth in range(1, 40)) + "  " * 40 + "x: 1\n"
)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (_BLOCK_40_DEEP, MAX_DEPTH + 1),  # mapping N starts on line N: the 33rd is refused
        ("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), 1),  # our count refuses it
        ("a: " + "[" * 1_001 + "]" * 1_001, 1),  # libyaml's own limit may refuse it first
        ("\n\nb: " + "{x: " * 5_000 + "1" + "}" * 5_000, 3),
    ],
    ids=["block 40 deep", "flow 33 deep", "flow 1,001 deep", "flow 5,000 deep on line 3"],
)
def test_too_deep_is_one_message_whichever_layer_notices(text: str, line: int) -> None:
    with pytest.raises(YamlError) as caught:
        read_documents(text)
    assert (caught.value.line, caught.value.message) == (line, f"nested deeper than {MAX_DEPTH} levels")


def test_empty_text_has_no_documents() -> None:
    assert read_documents("") == []


@given(st.text(max_size=200))
def test_never_crashes_on_arbitrary_text(text: str) -> None:
    try:
        read_documents(text)
    except YamlError as exc:
        line = exc.line
    else:
        return
    assert line >= 1


def _yaml_objects() -> int:
    gc.collect()
    return sum(isinstance(o, yaml.Node | yaml.Mark) for o in gc.get_objects())


def test_reading_leaves_no_yaml_nodes_behind() -> None:
    """A server rereads its files on every change: a read may keep nothing alive
    (PyYAML's constructor remembered every scalar node, leaking at each reload)."""
    text = (EXAMPLES / "ci-runner.yaml").read_text()
    before = _yaml_objects()
    for _ in range(3):
        read_documents(text)
        with pytest.raises(YamlError):
            read_documents("a: !!python/object:os.system x\n")  # the constructor refuses it
    assert _yaml_objects() == before
