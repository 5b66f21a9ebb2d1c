"""Where the tests find the repository's own files."""

import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "policies"
# The example policy files: policies/*.yaml less the kustomization.yaml that makes their ConfigMap.
EXAMPLE_FILES = sorted(path for path in EXAMPLES.glob("*.yaml") if path.name != "kustomization.yaml")


def make_variable(name: str) -> list[str]:
    """A variable of the Makefile (`NAME := ...`, continued lines joined), as the arguments it holds."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith(f"{name} :=")]
    return shlex.split(line.split(":=", 1)[1])
