import subprocess
import sys


def run_authz(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user (or CI) runs it."""
    return subprocess.run(
        [sys.executable, "-m", "authz", *args],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
