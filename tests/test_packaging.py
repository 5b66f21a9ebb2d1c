"""What a plain `pip install` of the project gives a user: every module its
commands import comes from a runtime dependency (not from the dev extra)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.analysis.test_inventory import TRAFFIC
from tests.analysis.traffic import records, write_log
from tests.paths import EXAMPLES, ROOT

# Top-level modules loaded from site-packages: the ones a distribution must provide
# (not the standard library, nor modules that Cython extensions create at run time).
_REPORT = """
import json, sys, sysconfig
sites = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
print(json.dumps(sorted(
    name for name, module in list(sys.modules.items())
    if "." not in name and any(str(getattr(module, "__file__", None) or "").startswith(site) for site in sites)
)))
"""


def _modules_after(code: str) -> set[str]:
    """Top-level modules from site-packages that a fresh interpreter has imported after ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\n{_REPORT}"], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def _third_party(code: str) -> set[str]:
    baseline = _modules_after("pass")
    return _modules_after(code) - baseline - {"authz"}


def _runtime_distributions() -> set[str]:
    """The project's runtime dependencies and everything they require, the dev extra left out."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pending = [Requirement(text) for text in project["dependencies"]]
    found: set[str] = set()
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found.add(name)
        pending += [Requirement(text) for text in metadata.requires(name) or ()]
    return found


def _uncovered(modules: set[str]) -> dict[str, list[str]]:
    providers = metadata.packages_distributions()
    runtime = _runtime_distributions()
    return {
        module: providers.get(module, [])
        for module in sorted(modules)
        if not {canonicalize_name(dist) for dist in providers.get(module, [])} & runtime
    }


def test_runtime_dependencies_cover_what_envoy_config_imports(tmp_path: Path) -> None:
    output = tmp_path / "envoy.yaml"
    code = (
        "from authz.cli import main\n"
        f"assert main(['envoy-config', '--zone', 'z', '--authz', '127.0.0.1:9191', '-o', {str(output)!r}]) == 0"
    )
    imported = _third_party(code)
    assert "envoy_data_plane" in imported  # the test sees the command's real imports
    assert _uncovered(imported) == {}
    assert output.read_text().startswith("# Zone egress gateway")


@pytest.mark.parametrize(
    "argv",
    [
        ["check", str(EXAMPLES)],
        [
            "explain",
            str(EXAMPLES),
            "--identity",
            "spiffe://prod.example.org/ns/ci/sa/ci-runner",
            "--host",
            "x.org",
        ],
    ],
)
def test_runtime_dependencies_cover_the_policy_commands(argv: list[str]) -> None:
    code = f"from authz.cli import main\nassert main({argv!r}) == 0"
    imported = _third_party(code)
    assert "yaml" in imported
    assert _uncovered(imported) == {}
    assert "envoy_data_plane" not in imported  # seconds to import: only envoy-config pays for it


def test_serving_does_not_import_envoy_data_plane() -> None:
    assert "envoy_data_plane" not in _third_party("import authz.ext_authz.server, authz.cli")


def test_runtime_dependencies_cover_the_inventory(tmp_path: Path) -> None:
    log = write_log(tmp_path / "d.jsonl", records(TRAFFIC))
    argv = ["inventory", str(log), "--policy", str(EXAMPLES), "--propose", str(tmp_path / "drafts"), "--json"]
    imported = _third_party(
        f"import authz.analysis.flowmap\nfrom authz.cli import main\nassert main({argv!r}) == 0"
    )
    assert {"duckdb", "_duckdb", "graphviz", "publicsuffixlist"} <= imported
    # _duckdb is the duckdb wheel's extension module, a lone .so that packages_distributions() names no owner of.
    assert _uncovered(imported - {"_duckdb"}) == {}
