"""Policy as code: YAML files in, a CompiledPolicy out, with every problem
reported as FILE:LINE: field: message."""

from authz.policy.compile import compile_policies, load_policy
from authz.policy.errors import PolicyError, Problem
from authz.policy.lint import lint
from authz.policy.load import PolicySet, load_paths

__all__ = ["PolicyError", "PolicySet", "Problem", "compile_policies", "lint", "load_paths", "load_policy"]
