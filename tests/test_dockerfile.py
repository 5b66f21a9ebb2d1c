"""The container image cannot be built here (no Docker engine): check what
makes it right. Every path it copies exists and is in the build context, it
installs exactly what uv.lock says (with uv pinned by hash), its entrypoint is the package's console script and its command parses, it runs
as a non-root user, its bases are pinned, and its final stage has no compilers."""

from __future__ import annotations

import fnmatch
import json
import tomllib

from authz.cli import _parser
from tests.paths import ROOT

LINES = [line.strip() for line in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()]
INSTRUCTIONS = [line for line in LINES if line and not line.startswith("#")]
STAGES: list[list[str]] = []
for line in INSTRUCTIONS:
    if line.startswith("FROM "):
        STAGES.append([])
    STAGES[-1].append(line)
FINAL = STAGES[-1]


def _in_context(path: str) -> bool:
    """Whether .dockerignore (an allow-list here) lets ``path`` into the build context."""
    included = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            included = negate
    return included


def test_every_path_it_copies_exists_and_is_in_the_build_context() -> None:
    copies = [
        line.split()[1:-1] for line in INSTRUCTIONS if line.startswith("COPY ") and "--from=" not in line
    ]
    sources = [source for sources in copies for source in sources]
    assert sources == ["requirements-uv.txt", "pyproject.toml", "uv.lock", "README.md", "authz", "policies"]
    for source in sources:
        assert (ROOT / source).exists(), source
        assert _in_context(source), f"{source} is excluded by .dockerignore"
    assert not _in_context(".venv")
    assert not _in_context("tests")


def test_the_entrypoint_is_the_console_script_and_the_command_parses() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = [
        json.loads(line.removeprefix("ENTRYPOINT ")) for line in FINAL if line.startswith("ENTRYPOINT ")
    ]
    assert entrypoint == ["authz"]
    assert scripts["authz"] == "authz.cli:main"
    (command,) = [json.loads(line.removeprefix("CMD ")) for line in FINAL if line.startswith("CMD ")]
    args = _parser().parse_args(command)
    assert (args.command, args.policy, args.listen) == (
        "serve",
        ["/etc/egress-authz/policies"],
        "0.0.0.0:9191",
    )
    (healthcheck,) = [line for line in FINAL if line.startswith("HEALTHCHECK ")]
    probe = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert probe[0] == "authz"
    health = _parser().parse_args(probe[1:])
    assert health.command == "health"
    # The plaintext health-only listener: it answers with or without --tls-cert on --listen.
    assert health.target == args.health_listen == "127.0.0.1:9192"


def test_it_runs_as_a_non_root_user() -> None:
    users = [line.split()[1] for line in FINAL if line.startswith("USER ")]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"0", "root"}
    assert user.isdigit()  # numeric: Kubernetes' runAsNonRoot can check it


def test_its_bases_are_pinned_and_the_final_stage_has_no_compilers() -> None:
    for stage in STAGES:
        image = stage[0].split()[1]
        tag = image.partition(":")[2]
        assert (tag and any(c.isdigit() for c in tag) and tag != "latest") or "@sha256:" in image, image
    final_text = " ".join(FINAL)
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in final_text, tool
    assert any(line.startswith("COPY --from=build") for line in FINAL)


def test_the_build_stage_installs_exactly_the_lock() -> None:
    build = STAGES[0]
    runs = [line.removeprefix("RUN ") for line in build if line.startswith("RUN ")]
    installs = [
        command for run in runs for command in run.split("&&") if " install" in command or "uv " in command
    ]
    # uv itself from the hash-pinned file, then the project and its dependencies from the lock, nothing else
    assert [command.split() for command in installs] == [
        ["python", "-m", "pip", "install", "--require-hashes", "--no-deps", "-r", "requirements-uv.txt"],
        [
            "uv",
            "sync",
            "--locked",
            "--no-editable",
            "--compile-bytecode",
            "--python",
            "/usr/local/bin/python3",
        ],
    ]
    # --locked refuses a lock that disagrees with pyproject.toml; the lock must be in place before it runs
    copied = [line for line in build if line.startswith("COPY ")]
    sync = build.index(next(line for line in build if "uv sync" in line))
    assert any("uv.lock" in line.split() for line in copied)
    assert all(build.index(line) < sync for line in copied)
    env = " ".join(line for line in build if line.startswith("ENV "))
    assert "UV_PROJECT_ENVIRONMENT=/opt/egress-authz" in env
    assert any(line.startswith("COPY --from=build /opt/egress-authz ") for line in FINAL)
    # requirements-uv.txt pins uv to one version by hashes, as `make lock` writes it
    pins = (ROOT / "requirements-uv.txt").read_text()
    assert pins.startswith("uv==")
    assert "--hash=sha256:" in pins
    assert "dev" not in " ".join(installs)  # the image has no test tools
