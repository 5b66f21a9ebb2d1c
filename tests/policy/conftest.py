import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

WriteFiles = Callable[..., Path]


@pytest.fixture
def write_files(tmp_path: Path) -> WriteFiles:
    """Write ``name=text`` files into a fresh directory and return it."""

    def write(**files: str) -> Path:
        for name, text in files.items():
            (tmp_path / f"{name}.yaml").write_text(text)
        return tmp_path

    return write


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh git repository (for the policy history), with one file that is not a policy."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for key, value in (("user.email", "t@example.org"), ("user.name", "t")):
        subprocess.run(["git", "-C", str(tmp_path), "config", key, value], check=True)
    (tmp_path / "README").write_text("not a policy\n")
    return tmp_path
