"""What every install of the project's own comes from: uv.lock, with uv
itself pinned by hash (requirements-uv.txt). `make test` installs with
`uv sync --locked`, which refuses a lock that disagrees with pyproject.toml;
these tests check that the lock covers what the README promises."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.paths import ROOT

LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = {package["name"]: package for package in LOCK["package"]}


def test_the_lock_pins_every_runtime_and_dev_requirement_to_one_version_with_hashes() -> None:
    wanted = PROJECT["project"]["dependencies"] + PROJECT["project"]["optional-dependencies"]["dev"]
    for text in wanted:
        requirement = Requirement(text)
        (package,) = [PACKAGES[canonicalize_name(requirement.name)]]
        assert requirement.specifier.contains(package["version"], prereleases=True), (
            text,
            package["version"],
        )
        files = package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else [])
        assert files, text
        assert all(file["hash"].startswith("sha256:") for file in files), text


def test_pyvoy_is_locked_for_linux_x86_64_and_aarch64_only() -> None:
    (project,) = [package for package in LOCK["package"] if package["name"] == "egress-authz"]
    (pyvoy,) = [dependency for dependency in project["dependencies"] if dependency["name"] == "pyvoy"]
    marker = pyvoy["marker"]
    assert "sys_platform == 'linux'" in marker
    assert set(re.findall(r"platform_machine == '(\w+)'", marker)) == {"x86_64", "aarch64"}


def test_the_build_backend_is_pinned_in_the_lock() -> None:
    (constraint,) = LOCK["manifest"]["build-constraints"]
    assert constraint["name"] == "setuptools"
    assert constraint["specifier"].startswith("==")
    requires = [Requirement(text) for text in PROJECT["build-system"]["requires"]]
    assert any(r.name == "setuptools" and r.specifier.contains(constraint["specifier"][2:]) for r in requires)


def test_make_and_the_image_use_the_same_uv() -> None:
    makefile = (ROOT / "Makefile").read_text()
    (version,) = re.findall(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE)
    pins = (ROOT / "requirements-uv.txt").read_text()
    assert re.findall(r"^uv==(\S+)", pins, re.MULTILINE) == [version]
    assert LOCK["version"] >= 1
    assert "sync --quiet --locked --extra dev" in makefile
