"""Policy files under attack: malformed YAML, wrong types, an alias bomb, a
number bomb, a 50 MB file, a file replaced while it is read. Each is a clear
``FILE:LINE: field: message`` error (never a traceback), and a running
reloader keeps serving the last good policy."""

import asyncio
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.policy import PolicyError, load_paths
from authz.policy.compile import CompileOptions
from authz.policy.errors import Problem
from authz.policy.load import MAX_FILE_BYTES
from authz.policy.reload import PolicyReloader
from authz.policy.yaml_source import MAX_NUMBER_LENGTH
from tests.cli.helpers import run_authz
from tests.paths import EXAMPLES

GOOD = (EXAMPLES / "ci-runner.yaml").read_text()
# The classic "billion laughs": nine levels of nine aliases, 10^9 strings if expanded.
ALIAS_BOMB = "lol0: &lol0 lol\n" + "".join(
    f"lol{level}: &lol{level} [{', '.join([f'*lol{level - 1}'] * 9)}]\n" for level in range(1, 10)
)
# YAML 1.1 reads 1:2:3 as a base-60 integer; PyYAML's cost is quadratic in its length.
SEXAGESIMAL_BOMB = GOOD.replace("ports: [443]", "ports: [" + "1:" * 200_000 + "1]", 1)

HOSTILE = {
    "unclosed flow sequence": ("spec: [unclosed\n", 2, "not valid YAML"),
    "tab indentation": (GOOD.replace("  egress:", "\tegress:"), 11, "not valid YAML"),
    "alias bomb": (ALIAS_BOMB, 1, "anchors and aliases are not supported"),
    "an alias inside a policy": (GOOD.replace("ports: [443]", "ports: &p [443]", 1), 14, "anchors and aliases"),
    "a sexagesimal number bomb": (SEXAGESIMAL_BOMB, 14, f"a number longer than {MAX_NUMBER_LENGTH} characters"),
    "an integer of 5,000 digits": (GOOD.replace("ports: [443]", f"ports: [{'9' * 5000}]", 1), 14, "a number longer"),
    "a date that is not one": (GOOD.replace("change_ref: CHG-1077", "change_ref: 2026-13-45"), 7, "cannot read '2026-13-45'"),
    "an explicit tag that does not parse": (GOOD.replace("ports: [443]", "ports: [!!int nope]", 1), 14, "cannot read 'nope'"),
    "a Python object tag": (GOOD.replace("ports: [443]", "ports: [!!python/object/apply:os.system [id]]", 1), 14, "unsupported tag"),
    "nesting 100,000 deep": ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", 1, "nested deeper than"),
    "a duplicate key": (GOOD.replace("  egress:", "  egress: []\n  egress:"), 12, "duplicate key 'egress'"),
    "a NUL byte": (GOOD.replace("team-platform", "team-\x00platform"), 6, "not valid YAML"),
    "spec is a list": (GOOD.replace("spec:\n", "spec: []\nx:\n"), 8, "spec: Input should be a valid dictionary"),
    "ports is a string": (GOOD.replace("ports: [443]", "ports: https", 1), 14, "spec.egress[0].ports"),
    "hosts is a mapping": (GOOD.replace("hosts: [registry.npmjs.org, npmjs.org]", "hosts: {a: 1}"), 13, "spec.egress[0].hosts"),
    "a port is a float": (GOOD.replace("ports: [443]", "ports: [443.5]", 1), 14, "spec.egress[0].ports[0]"),
    "a port is a date": (GOOD.replace("ports: [443]", "ports: [2026-01-01]", 1), 14, "spec.egress[0].ports[0]"),
    "a port is a boolean": (GOOD.replace("ports: [443]", "ports: [yes]", 1), 14, "spec.egress[0].ports[0]"),
    "identities is null": (GOOD.replace("  identities:\n", "  identities:\n  x:\n"), 9, "spec.identities: Input should be a valid list"),
    "egress is a string": (GOOD.replace("  egress:", "  egress: everything\n  unused:"), 11, "spec.egress: Input should be a valid list"),
    "a host of a megabyte": (GOOD.replace("npmjs.org]", "n" * 2**20 + ".org]", 1), 13, "spec.egress[0].hosts[1]"),
    "a document that is a string": ("just text\n", 1, "a document must be a mapping"),
    "a key that is a list": ("? [a]\n: 1\n", 1, "mapping keys must be strings"),
    "only a document end": ("---\n...\n", 1, "holds no YAML document"),
}  # fmt: skip


def _problems(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_paths([directory])
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize(("text", "line", "message"), list(HOSTILE.values()), ids=list(HOSTILE))
def test_a_hostile_file_is_a_clear_error_with_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    (tmp_path / "ci-runner.yaml").write_text(text)
    problems = _problems(tmp_path)
    where = f"{tmp_path / 'ci-runner.yaml'}:"
    assert all(problem.startswith(where) for problem in problems), problems
    assert any(problem.startswith(f"{where}{line}: ") and message in problem for problem in problems), (
        problems
    )
    assert all(len(problem) < 500 for problem in problems)  # the message quotes a value, not a megabyte of it


def test_a_50_mb_file_is_refused_by_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("w") as file:
        file.write(GOOD)
        file.truncate(50 * 2**20)  # a sparse file: 50 MB to read, no disk spent
    (problem,) = _problems(tmp_path)
    assert problem == f"{path}:0: larger than {MAX_FILE_BYTES // 2**20} MiB; split it"


def test_authz_check_prints_the_errors_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "bomb.yaml").write_text(ALIAS_BOMB)
    (tmp_path / "numbers.yaml").write_text(SEXAGESIMAL_BOMB.replace("name: ci-runner", "name: ci-runner-2"))
    result = run_authz("check", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{tmp_path / 'bomb.yaml'}:1: anchors and aliases are not supported" in result.stderr
    assert re.search(rf"{re.escape(str(tmp_path / 'numbers.yaml'))}:14: a number longer than", result.stderr)


# -- wrong types anywhere --------------------------------------------------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30),
    st.dates(), st.binary(max_size=10),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a parsed document a value sits."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


DOCUMENT = yaml.safe_load(GOOD)
PLACES = _paths(DOCUMENT)


@settings(
    deadline=None, suppress_health_check=list(HealthCheck)
)  # the fixture is reused; file writes may be slow
@given(place=st.sampled_from(PLACES), value=VALUES)
def test_any_value_of_any_type_anywhere_is_loaded_or_a_clear_error(
    tmp_path: Path, place: tuple[Any, ...], value: Any
) -> None:
    document = yaml.safe_load(GOOD)
    target = document
    for key in place[:-1]:
        target = target[key]
    target[place[-1]] = value
    (tmp_path / "ci-runner.yaml").write_text(yaml.safe_dump(document))
    problems: tuple[Problem, ...] = ()
    try:
        load_paths([tmp_path])
    except PolicyError as exc:
        problems = exc.problems
        assert problems
    assert all(str(problem).startswith(f"{tmp_path / 'ci-runner.yaml'}:") for problem in problems)


# -- a running reloader keeps its last good policy ----------------------------------------


async def test_each_hostile_change_is_rejected_and_the_last_good_policy_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = tmp_path / "ci-runner.yaml"
    policy.write_text(GOOD)
    reloader = PolicyReloader([str(tmp_path)], CompileOptions(), lambda _: None, debounce_ms=20)
    good = await reloader.load()
    big = tmp_path / "big.yaml"
    with caplog.at_level(logging.ERROR, logger="authz.reload"):
        for index, (name, (text, _, message)) in enumerate(HOSTILE.items()):
            policy.write_text(text)
            # Rewritten in place, two texts of one size within one clock tick would look
            # unchanged (the README says: write by rename); each its own mtime here.
            os.utime(policy, ns=(2_000_000_000 * 10**9 + index, 2_000_000_000 * 10**9 + index))
            assert not await reloader.reload(), name
            assert reloader.current is good, name
            assert message in caplog.records[-1].getMessage(), name
        policy.write_text(GOOD)
        with big.open("w") as file:
            file.truncate(50 * 2**20)
        assert not await reloader.reload()
        assert "larger than 4 MiB" in caplog.records[-1].getMessage()
    assert reloader.current is good
    assert reloader.counts["rejected"] == len(HOSTILE) + 1
    big.unlink()
    assert not await reloader.reload()  # back to the good files: the same version, nothing to swap
    assert reloader.counts["unchanged"] == 1


# -- a file replaced while it is read -----------------------------------------------

TD = "spiffe://prod.example.org/ns/ci/sa"


def _claiming(name: str, identity: str) -> str:
    return GOOD.replace("name: ci-runner", f"name: {name}").replace(f"{TD}/ci-runner", identity)


# Two complete states of two files. Each file's text differs in size between
# them (the identities differ in length), and every mix of the two states
# claims one identity twice: a reload that read one file before a change and
# the other after would be refused, never served.
STATE_A = {"one.yaml": _claiming("one", f"{TD}/x"), "two.yaml": _claiming("two", f"{TD}/yy")}
STATE_B = {"one.yaml": _claiming("one", f"{TD}/yy"), "two.yaml": _claiming("two", f"{TD}/x")}
SWAPS = 150


def _write_state(directory: Path, state: dict[str, str]) -> None:
    """As git and the kubelet write: a new file renamed over the old one, file by file."""
    for name, text in state.items():
        temporary = directory / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, directory / name)


async def test_files_replaced_while_they_are_read_are_never_served_half_and_half(tmp_path: Path) -> None:
    versions = {}
    for label, state in (("A", STATE_A), ("B", STATE_B)):
        directory = tmp_path / label
        directory.mkdir()
        _write_state(directory, state)
        versions[load_paths([directory]).version] = label
    live = tmp_path / "live"
    live.mkdir()
    _write_state(live, STATE_A)
    swapped: list[str] = []
    reloader = PolicyReloader(
        [str(live)], CompileOptions(), lambda p: swapped.append(p.version), debounce_ms=0
    )
    await reloader.load()
    done = threading.Event()

    def writer() -> None:
        for index in range(SWAPS):
            _write_state(live, STATE_B if index % 2 == 0 else STATE_A)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reloads = 0
    while not done.is_set() and reloads < 10 * SWAPS:  # bounded: the writer ends after SWAPS states
        await reloader.reload()
        reloads += 1
        await asyncio.sleep(0)
    thread.join(30)
    assert not thread.is_alive()
    await reloader.reload()  # the final state: STATE_A (SWAPS is even)
    assert all(version in versions for version in swapped), (swapped, versions)
    assert reloader.current is not None
    assert versions[reloader.current.version] == "A"
