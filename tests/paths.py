"""Where the tests find the repository's own files."""

import importlib.util
import shlex
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "policies"
# The example policy files: policies/*.yaml less the kustomization.yaml that makes their ConfigMap.
EXAMPLE_FILES = sorted(path for path in EXAMPLES.glob("*.yaml") if path.name != "kustomization.yaml")


def make_variable(name: str) -> list[str]:
    """A variable of the Makefile (`NAME := ...`, continued lines joined), as the arguments it holds."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith(f"{name} :=")]
    return shlex.split(line.split(":=", 1)[1])


def bench_module(name: str) -> ModuleType:
    """A script of bench/ as a module (the benchmarks themselves never run as tests). Its own
    imports are its bench/ siblings, and it is registered under its name: dataclasses look it up."""
    bench = str(ROOT / "bench")
    sys.path.insert(0, bench)
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(bench)
