"""``make demo``: a tour of the example policies.

Every case of the example policy tests is decided by the engine and shown as
a table of allow/deny with reasons; the exit status says whether each one
came out as its test expects. Later the same tour runs through a real Envoy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from authz.policy import PolicyError, load_policy
from authz.policy.testcases import CaseResult, run_tests

__all__ = ["main"]

DEFAULT_POLICIES = Path(__file__).resolve().parents[1] / "policies"


def _short_identity(identity: str | None) -> str:
    if not identity:
        return "(none)"
    return identity.removeprefix("spiffe://prod.example.org/")


def _row(result: CaseResult) -> tuple[str, ...]:
    decision = result.decision
    verdict = decision.verdict.value.upper()
    if decision.dry_run_reason is not None:
        verdict += f" (would deny: {decision.dry_run_reason.value})"
    request = result.request
    shape = f"{request.method} {request.path or ''}".rstrip() if request.method else "TLS"
    return (
        "ok" if result.passed else "FAIL",
        _short_identity(decision.identity),
        decision.destination,
        shape,
        verdict,
        decision.reason.value,
        decision.rule or "-",
    )


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    header = ("", "identity", "destination", "request", "decision", "reason", "rule")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m authz.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=Path, default=DEFAULT_POLICIES, help="policy directory")
    parser.add_argument("--once", action="store_true", help="run the tour and exit (the default for now)")
    args = parser.parse_args(argv)
    try:
        policy_set, compiled = load_policy([args.policies])
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    results = run_tests(compiled, policy_set)
    print(f"egress-authz demo: {len(compiled.services)} example policies, version {compiled.version}\n")
    print(_table([_row(result) for result in results]))
    failed = [result for result in results if not result.passed]
    for result in failed:
        print(f"\n{result.file}:{result.line}: {result.name}: {'; '.join(result.failures)}", file=sys.stderr)
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    print("Ask your own question, e.g.:")
    print(
        f"  .venv/bin/authz explain {args.policies} --identity"
        " spiffe://prod.example.org/ns/ci/sa/ci-runner --host github.com --port 443"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
