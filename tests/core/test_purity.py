"""The core is pure: it imports the standard library and idna, nothing else."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.paths import ROOT

CORE = ROOT / "authz" / "core"
HEAVY = ("grpc", "google", "yaml", "pydantic", "opentelemetry", "cryptography")


def _imports(path: str) -> set[str]:
    tree = ast.parse((CORE / path).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            found.add(node.module)
    return found


def test_every_core_module_imports_only_the_standard_library_idna_and_the_core() -> None:
    modules = sorted(path.name for path in CORE.glob("*.py"))
    assert "engine.py" in modules
    strays = {
        (module, name)
        for module in modules
        for name in _imports(module)
        if name.split(".")[0] not in sys.stdlib_module_names
        and name not in ("__future__", "idna")
        and not name.startswith("authz.core")
    }
    assert strays == set()


def test_importing_the_engine_loads_no_heavy_package() -> None:
    code = (
        "import authz.core.engine, sys\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
