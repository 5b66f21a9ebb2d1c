from pathlib import Path
from typing import Any

import pytest

from authz.policy import PolicyError, load_paths, load_policy
from authz.policy.load import MAX_FILE_BYTES
from tests.policy.conftest import WriteFiles

GOOD = """\
apiVersion: egress-authz/v1
kind: EgressPolicy
metadata: {name: svc, owner: team, change_ref: CHG-1}
spec:
  identities: [spiffe://prod.example.org/ns/a/sa/svc]
  egress:
    - id: api
      hosts: [api.example.com]
      ports: [443]
"""


def _problems(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy([directory])
    return [str(problem) for problem in caught.value.problems]


def test_loads_a_good_policy(write_files: WriteFiles) -> None:
    policy_set, compiled = load_policy([write_files(svc=GOOD)])
    assert [loaded.model.metadata.name for loaded in policy_set.policies] == ["svc"]
    assert compiled.by_identity["spiffe://prod.example.org/ns/a/sa/svc"].name == "svc"
    assert compiled.version.startswith("sha256:")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("      ports: [443]", "      ports: [443, 70000]", ":9: spec.egress[0].ports[1]: port 70000 out of range"),
        ("      hosts: [api.example.com]", "      hosts: [api..example.com]", ":8: spec.egress[0].hosts[0]: bad host"),
        ("    - id: api", "    - id: api\n      colour: blue", ":8: spec.egress[0].colour: unknown key 'colour'"),
        ("  identities: [spiffe://prod.example.org/ns/a/sa/svc]", "  identities: [spiffe://Prod/x]",
         ":5: spec.identities[0]: bad SPIFFE ID"),
        ("      ports: [443]\n", "", ":7: spec.egress[0].ports: missing required key 'ports'"),
        ("kind: EgressPolicy", "kind: NetworkPolicy", ":2: kind: must be one of EgressPolicy, EgressPolicyTest"),
        ("apiVersion: egress-authz/v1", "apiVersion: v2", ":1: apiVersion: must be 'egress-authz/v1'"),
        ("{name: svc,", "{name: Svc,", ":3: metadata.name: 'Svc' must be lower-case"),
        ("  egress:", "  mode: audit\n  egress:", ":6: spec.mode: must be one of enforce, dry-run"),
        ("      ports: [443]", "      ports: [443]\n      http: {}", ":10: spec.egress[0].http: http needs methods"),
        ("change_ref: CHG-1", "change_ref: 1042", ":3: metadata.change_ref: Input should be a valid string"),
    ],
)  # fmt: skip
def test_errors_name_file_line_and_field(write_files: WriteFiles, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    directory = write_files(svc=GOOD.replace(old, new))
    problems = _problems(directory)
    assert any(
        problem == f"{directory / 'svc.yaml'}{expected}" or expected in problem for problem in problems
    ), problems
    assert all(problem.startswith(f"{directory / 'svc.yaml'}:") for problem in problems)


def test_every_problem_is_reported_not_just_the_first(write_files: WriteFiles) -> None:
    bad = GOOD.replace("[443]", "[0]").replace("api.example.com", '"*"')
    assert len(_problems(write_files(svc=bad, other="not: [valid"))) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{a: [}", "not valid YAML"),
        ("{{{", "mapping keys must be strings"),
        ("- just\n- a list\n", "a document must be a mapping"),
        ("plain words", "a document must be a mapping"),
    ],
)
def test_not_a_policy(write_files: WriteFiles, text: str, message: str) -> None:
    (problem,) = _problems(write_files(svc=text))
    assert message in problem


def test_huge_file_is_refused_before_parsing(write_files: WriteFiles) -> None:
    directory = write_files(svc="# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    (problem,) = _problems(directory)
    assert problem.endswith("larger than 4 MiB; split it")


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "svc.yaml").write_bytes(b"a: 1\nb: \xff\n")
    (problem,) = _problems(tmp_path)
    assert problem == f"{tmp_path / 'svc.yaml'}:2: not UTF-8 text"


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    assert "cannot read" in _problems(tmp_path / "absent.yaml")[0]
    assert "no policy files found" in _problems(tmp_path)[0]


def test_only_tests_is_not_a_policy(write_files: WriteFiles) -> None:
    test = "apiVersion: egress-authz/v1\nkind: EgressPolicyTest\nmetadata: {name: t}\nspec:\n  cases:\n"
    test += "    - {name: c, identity: null, destination: {host: a.com}, expect: {verdict: deny}}\n"
    assert "no EgressPolicy documents found" in _problems(write_files(t=test))[0]
    assert len(load_paths([write_files(t=test)]).tests) == 1


def test_several_documents_in_one_file(write_files: WriteFiles) -> None:
    second = GOOD.replace("name: svc", "name: svc2").replace("sa/svc]", "sa/svc2]")
    policy_set, compiled = load_policy([write_files(svc=GOOD + "---\n" + second + "---\n")])
    assert len(compiled.services) == 2
    assert policy_set.policies[1].source.line(("metadata",)) == 13


def test_a_directory_skips_dot_entries_and_its_kustomization(tmp_path: Path) -> None:
    from authz.policy.load import discover

    for name in (
        "p.yaml",
        "kustomization.yaml",
        ".hidden.yaml",
        "..2026_11_23/p.yaml",
        "sub/q.yml",
        "notes.txt",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x: 1\n")
    assert [p.relative_to(tmp_path).as_posix() for p in discover([tmp_path])] == ["p.yaml", "sub/q.yml"]


def test_a_configmap_volume_is_read_without_entering_its_timestamped_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet removes the old ``..<timestamp>`` directory as it swaps the
    volume: a walk that went inside could fail on it, gone mid-walk (the
    hot-reload test under traffic once logged that traceback)."""
    import os

    from authz.policy.load import discover
    from tests.configmap import configmap_update

    configmap_update(tmp_path, "2026_11_23_10_00_001", {"p.yaml": "x: 1\n", "q.yml": "x: 2\n"})
    scanned: list[str] = []
    scandir = os.scandir

    def recording(path: Any) -> Any:
        scanned.append(os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", recording)
    assert [p.name for p in discover([tmp_path])] == ["p.yaml", "q.yml"]
    assert scanned == [os.fspath(tmp_path)]  # the volume's top only: the links lead to the files


def test_the_version_names_what_decides_not_the_tests(tmp_path: Path) -> None:
    from authz.policy import load_paths
    from tests.paths import EXAMPLES

    (tmp_path / "ci.yaml").write_text((EXAMPLES / "ci-runner.yaml").read_text())
    alone = load_paths([tmp_path]).version
    (tmp_path / "ci.test.yaml").write_text((EXAMPLES / "tests" / "ci-runner.test.yaml").read_text())
    assert load_paths([tmp_path]).version == alone
    (tmp_path / "ci.yaml").write_text((EXAMPLES / "ci-runner.yaml").read_text().replace("[443]", "[8443]", 1))
    assert load_paths([tmp_path]).version != alone
