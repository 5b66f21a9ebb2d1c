"""The ``authz`` command line: one module a group of commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from authz import __version__
from authz.cli import baseline, envoy, inventory, lab, lifecycle, policy, replay, scorecard, serve
from authz.cli._args import EXIT_USAGE
from authz.policy import PolicyError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        code: int = getattr(args, "policy_error_exit", EXIT_USAGE)
        return code
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authz", description="Identity-aware egress authorization.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (policy, lifecycle, inventory, replay, scorecard, baseline, serve, envoy, lab):
        group.register(commands)
    return parser
