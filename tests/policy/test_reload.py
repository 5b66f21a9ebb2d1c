"""Hot reload: what is swapped in, what is refused, and what is noticed."""

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from authz.core.compiled import CompiledPolicy
from authz.policy import load_paths
from authz.policy.compile import CompileOptions
from authz.policy.reload import PolicyReloader
from tests.configmap import configmap_update
from tests.paths import EXAMPLES

CI_YAML = (EXAMPLES / "ci-runner.yaml").read_text()


def _version(directory: Path) -> str:
    return load_paths([directory]).version


class Swaps:
    def __init__(self) -> None:
        self.versions: list[str] = []
        self.changed = asyncio.Event()

    def __call__(self, compiled: CompiledPolicy) -> None:
        self.versions.append(compiled.version)
        self.changed.set()


def _reloader(path: Path, swaps: Swaps, **options: Any) -> PolicyReloader:
    return PolicyReloader([str(path)], CompileOptions(), swaps, debounce_ms=20, **options)


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "ci.yaml").write_text(CI_YAML)
    return directory


async def test_a_good_change_is_swapped_in_and_a_rewrite_of_the_same_text_is_not(policies: Path) -> None:
    swaps = Swaps()
    reloader = _reloader(policies, swaps)
    first = await reloader.load()
    (policies / "ci.yaml").write_text(CI_YAML.replace("ports: [443]", "ports: [443, 8443]", 1))
    assert await reloader.reload()
    assert swaps.versions == [first.version, _version(policies)]
    os.utime(policies / "ci.yaml")  # touched, same content
    assert not await reloader.reload()
    assert reloader.counts == {"applied": 2, "unchanged": 1}


@pytest.mark.parametrize(
    "bad",
    [
        "spec: [unclosed\n",  # YAML
        CI_YAML.replace("ports: [443]", "ports: [http]", 1),  # schema
        "",  # empty: half-written
        CI_YAML[: CI_YAML.index("    - id: github")]
        + "    - id: github\n      hosts: [github.com]\n",  # cut mid-rule
    ],
    ids=["yaml", "schema", "empty", "half-written"],
)
async def test_a_bad_change_is_logged_once_and_the_last_good_policy_keeps_serving(
    policies: Path, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    swaps = Swaps()
    reloader = _reloader(policies, swaps)
    good = await reloader.load()
    (policies / "ci.yaml").write_text(bad)
    with caplog.at_level(logging.ERROR, logger="authz.reload"):
        assert not await reloader.reload()
        assert not await reloader.reload()  # the same bad files: not logged again
    (message,) = [record.getMessage() for record in caplog.records]
    assert message.startswith(f"policy change rejected (request); still serving {good.version}:")
    assert f"{policies / 'ci.yaml'}:" in message
    assert reloader.current is good
    assert reloader.counts["rejected"] == 1
    assert reloader.rejected  # egress_authz.policy.rejected: 1 until the files are fixed
    (policies / "ci.yaml").write_text(CI_YAML.replace("ports: [443]", "ports: [8443]", 1))
    assert await reloader.reload()
    assert swaps.versions[-1] == _version(policies)
    assert not reloader.rejected


async def test_a_second_policy_claiming_the_same_identity_is_refused(policies: Path) -> None:
    reloader = _reloader(policies, Swaps())
    good = await reloader.load()
    (policies / "copy.yaml").write_text(CI_YAML.replace("name: ci-runner", "name: ci-runner-2"))
    assert not await reloader.reload()
    assert reloader.current is good


async def test_files_that_change_while_read_are_read_again(
    policies: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from authz.policy import reload as module

    real = module.load_policy
    calls = 0

    def load_and_change(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        result = real(*args)
        if calls == 1:  # a writer finishes its change while we read
            (policies / "ci.yaml").write_text(CI_YAML.replace("ports: [443]", "ports: [9443]", 1))
        return result

    swaps = Swaps()
    reloader = _reloader(policies, swaps)
    await reloader.load()
    monkeypatch.setattr(module, "load_policy", load_and_change)
    (policies / "ci.yaml").write_text(CI_YAML.replace("ports: [443]", "ports: [8443]", 1))
    assert await reloader.reload()
    assert reloader.counts["retried"] == 1
    assert swaps.versions[-1] == _version(policies)  # the final state, never the one in between


@pytest.fixture
async def watching(tmp_path: Path) -> AsyncIterator[tuple[Path, Swaps, Callable[[], None]]]:
    volume = tmp_path / "volume"
    volume.mkdir()
    configmap_update(volume, "2026_11_23_10_00_00.1", {"ci.yaml": CI_YAML})
    swaps = Swaps()
    reloader = _reloader(volume, swaps)
    await reloader.load()
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.watch(stop))
    await asyncio.sleep(0.2)  # the watcher is up
    try:
        yield volume, swaps, reloader.request
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_configmap_update_is_seen_and_its_files_are_read_once(
    watching: tuple[Path, Swaps, Callable[[], None]],
) -> None:
    volume, swaps, _ = watching
    swaps.changed.clear()
    configmap_update(
        volume, "2026_11_23_10_05_00.2", {"ci.yaml": CI_YAML.replace("ports: [443]", "ports: [8443]", 1)}
    )
    await asyncio.wait_for(swaps.changed.wait(), 10)
    assert swaps.versions[-1] == _version(volume)
    assert len(swaps.versions) == 2


async def _until_swapped_to(swaps: Swaps, version: str, what: str, timeout: float = 10.0) -> None:
    """Until ``version`` is the last swapped in (bounded; fails saying what did not happen)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (swaps.versions and swaps.versions[-1] == version):
        swaps.changed.clear()
        left = deadline - asyncio.get_running_loop().time()
        try:
            await asyncio.wait_for(swaps.changed.wait(), max(left, 0))
        except TimeoutError:
            raise AssertionError(
                f"{what}: {version} not swapped in within {timeout} s; {swaps.versions}"
            ) from None


async def test_a_request_rereads_without_a_file_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without file watching (serve --no-watch) a change is applied on request (SIGHUP) only. A
    reloader watching the same files is the control: once it has applied a change, the change was
    there to be seen for a while, and the other, live (it has just applied a request), had not."""
    import watchfiles

    file_watchers: list[asyncio.Event] = []  # the stop event of each watch that started watching files
    real_awatch = watchfiles.awatch

    def awatch(*paths: Any, stop_event: asyncio.Event, **options: Any) -> Any:
        file_watchers.append(stop_event)
        return real_awatch(*paths, stop_event=stop_event, **options)

    monkeypatch.setattr(watchfiles, "awatch", awatch)
    policy = tmp_path / "ci.yaml"
    policy.write_text(CI_YAML)
    swaps, control_swaps = Swaps(), Swaps()
    reloader, control = _reloader(tmp_path, swaps), _reloader(tmp_path, control_swaps)
    first = (await reloader.load()).version
    await control.load()
    stop, control_stop = asyncio.Event(), asyncio.Event()
    tasks = [
        asyncio.create_task(reloader.watch(stop, files=False)),
        asyncio.create_task(control.watch(control_stop)),
    ]
    try:
        policy.write_text(CI_YAML.replace("ports: [443]", "ports: [8443]", 1))
        requested = _version(tmp_path)
        for _ in range(500):  # bounded: until the watch is up to take the request
            reloader.request()  # SIGHUP
            await asyncio.sleep(0.01)
            if swaps.versions[-1] == requested:
                break
        assert swaps.versions == [first, requested]
        policy.write_text(CI_YAML.replace("ports: [443]", "ports: [9443]", 1))
        unrequested = _version(tmp_path)
        await _until_swapped_to(control_swaps, unrequested, "the watching reloader (the control)")
        assert swaps.versions == [first, requested]  # no watcher: nothing happened by itself
        assert file_watchers == [control_stop]
        reloader.request()
        await _until_swapped_to(swaps, unrequested, "the request")
        assert swaps.versions == [first, requested, unrequested]
    finally:
        stop.set()
        control_stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)


async def test_a_change_made_before_the_watch_began_is_caught_up(tmp_path: Path) -> None:
    """Between a worker's first load and its watch, a change has no event of its own."""
    (tmp_path / "ci.yaml").write_text(CI_YAML)
    swaps = Swaps()
    reloader = _reloader(tmp_path, swaps)
    await reloader.load()
    (tmp_path / "ci.yaml").write_text(CI_YAML.replace("ports: [443]", "ports: [8443]", 1))
    swaps.changed.clear()
    stop = asyncio.Event()
    task = asyncio.create_task(reloader.watch(stop))
    await asyncio.wait_for(swaps.changed.wait(), 10)
    assert swaps.versions[-1] == _version(tmp_path)
    assert reloader.counts == {"applied": 2}  # and the quiet rereads since found nothing to do
    stop.set()
    await asyncio.wait_for(task, 5)
