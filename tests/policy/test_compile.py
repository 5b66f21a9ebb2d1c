import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz import EgressRequest, evaluate
from authz.policy import PolicyError, load_policy
from tests.paths import EXAMPLE_FILES, EXAMPLES
from tests.policy.conftest import WriteFiles
from tests.policy.test_load import GOOD


def _problems(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policy([directory])
    return [str(problem) for problem in caught.value.problems]


def test_two_policies_may_not_claim_one_identity(write_files: WriteFiles) -> None:
    other = GOOD.replace("name: svc", "name: other")
    (problem,) = _problems(write_files(a=GOOD, b=other))
    assert problem.endswith(
        "b.yaml:5: spec.identities[0]: spiffe://prod.example.org/ns/a/sa/svc is already claimed by"
        " policy 'svc': an identity has one policy"
    )


def test_duplicate_policy_names(write_files: WriteFiles) -> None:
    other = GOOD.replace("sa/svc]", "sa/other]")
    (problem,) = _problems(write_files(a=GOOD, b=other))
    assert "b.yaml:3: metadata.name: policy 'svc' is also defined in" in problem


def test_duplicate_rule_ids(write_files: WriteFiles) -> None:
    doubled = GOOD + "    - id: api\n      hosts: [b.example.com]\n      ports: [443]\n"
    (problem,) = _problems(write_files(a=doubled))
    assert problem.endswith("a.yaml:10: spec.egress[1].id: duplicate rule id 'api'")


def test_a_prefix_and_an_exact_id_may_overlap_and_the_exact_one_wins(write_files: WriteFiles) -> None:
    prefix = (
        GOOD.replace("name: svc", "name: ns")
        .replace("ns/a/sa/svc]", "ns/a/*]")
        .replace("api.example", "ns.example")
    )
    _, compiled = load_policy([write_files(a=GOOD, b=prefix)])
    assert compiled.service_for("spiffe://prod.example.org/ns/a/sa/svc").name == "svc"  # type: ignore[union-attr]
    assert compiled.service_for("spiffe://prod.example.org/ns/a/sa/job").name == "ns"  # type: ignore[union-attr]


def test_version_is_a_content_hash(write_files: WriteFiles) -> None:
    first = load_policy([write_files(a=GOOD)])[1].version
    assert load_policy([write_files(a=GOOD)])[1].version == first
    changed = load_policy([write_files(a=GOOD.replace("[443]", "[8443]"))])[1].version
    assert changed != first


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.permutations([p.name for p in EXAMPLE_FILES]))
def test_compile_is_deterministic_whatever_the_file_order(tmp_path: Path, names: list[str]) -> None:
    _, reference = load_policy(EXAMPLE_FILES)
    target = tmp_path / "copy"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    for index, name in enumerate(names):  # new names, so a directory walk meets them in another order
        shutil.copy(EXAMPLES / name, target / f"{index:02d}-{name}")
    _, compiled = load_policy([target])
    assert compiled.version == reference.version
    assert [s.name for s in sorted(compiled.services, key=lambda s: s.name)] == sorted(
        s.name for s in reference.services
    )
    for service in reference.services:
        for identity in service.identities:
            for rule in service.rules:
                for host in rule.hosts:
                    request = EgressRequest(identity, str(host).replace("*", "x"), 443)
                    assert evaluate(compiled, request) == evaluate(reference, request)
