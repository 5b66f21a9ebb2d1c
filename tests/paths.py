"""Where the tests find the repository's own files."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "policies"
# The example policy files: policies/*.yaml less the kustomization.yaml that makes their ConfigMap.
EXAMPLE_FILES = sorted(path for path in EXAMPLES.glob("*.yaml") if path.name != "kustomization.yaml")
