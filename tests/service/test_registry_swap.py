"""Changing what is served while serving: load a new version (served once warm, then the default), unload
an old one (no new requests, those it admitted answered, then released), a failed load that leaves the
served versions alone, the repository poll, and the index."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from service.errors import Draining, LoadFailed, ModelNotFound, VersionNotFound
from service.metrics import Metrics
from service.registry import IndexEntry, ModelRegistry
from service.settings import Settings
from tests.service.api.conftest import softmax
from tests.service.conftest import TwoVersions

T = TypeVar("T")
SEQUENCE = np.linspace(-1.0, 1.0, 7 * 5, dtype=np.float32).reshape(7, 5)


def repository_with(two_versions: TwoVersions, tmp_path: Path, *versions: int) -> Path:
    root = tmp_path / "repository"
    root.mkdir()
    for version in versions:
        publish(two_versions, root, version)
    return root


def publish(two_versions: TwoVersions, root: Path, version: int) -> None:
    """Copy a version into place the way the docs say: into a hidden folder, then rename it."""
    hidden = root / "swap" / f".{version}"
    shutil.copytree(two_versions.staging / "swap" / str(version), hidden)
    hidden.rename(root / "swap" / str(version))


def with_registry(root: Path, check: Callable[[ModelRegistry], Awaitable[T]], **settings: Any) -> T:
    async def scenario() -> T:
        registry = ModelRegistry(Settings(repository=root, **settings), Metrics())
        registry.start()
        try:
            while "loading models" in registry.readiness()[1]:
                await asyncio.sleep(0.01)
            return await check(registry)
        finally:
            await registry.stop()

    return asyncio.run(asyncio.wait_for(scenario(), 120))


async def answer(registry: ModelRegistry, version: str | None = None) -> tuple[int, np.ndarray]:
    found = registry.resolve("swap", version)
    assert found.batcher is not None
    [output] = await found.batcher.infer([SEQUENCE], timeout_seconds=30)
    return found.version, output


def test_a_loaded_version_becomes_the_default_and_an_unloaded_one_finishes_first(
    two_versions: TwoVersions, tmp_path: Path
) -> None:
    root = repository_with(two_versions, tmp_path, 1)

    async def check(registry: ModelRegistry) -> None:
        version, first = await answer(registry)
        assert version == 1
        np.testing.assert_allclose(softmax(first), two_versions.expected[1](SEQUENCE.tolist()), atol=1e-4, rtol=0)
        publish(two_versions, root, 2)
        load = asyncio.create_task(registry.load_model("swap"))
        states: list[str] = []
        while not load.done():  # every turn of the loop: the new version shows, loading, before it serves
            if 2 in registry.model_versions("swap"):
                states.append(registry.lookup("swap", 2).state)
                assert registry.default_version("swap") == (2 if states[-1] == "ready" else 1)
            await asyncio.sleep(0)
        await load
        assert states[0] == "loading" and states[-1] == "ready"
        version, second = await answer(registry)
        assert registry.default_version("swap") == 2 and version == 2
        np.testing.assert_allclose(softmax(second), two_versions.expected[2](SEQUENCE.tolist()), atol=1e-4, rtol=0)
        assert np.abs(softmax(first) - softmax(second)).max() > 1e-3, "the versions answer differently"
        assert (await answer(registry, "1"))[0] == 1, "the old version still serves when pinned"

        # A request that chose version 1 and is still reading its body when the unload starts.
        old = registry.resolve("swap", "1")
        assert old.batcher is not None
        reading = old.batcher.reading()
        reading.__enter__()
        unload = asyncio.create_task(registry.unload_version("swap", "1"))
        await asyncio.sleep(0.2)
        assert old.state == "unloading" and not unload.done() and old.batcher is not None
        assert registry.readiness() == (True, [])
        with pytest.raises(VersionNotFound, match="is being unloaded"):
            registry.resolve("swap", "1")
        assert registry.resolve("swap").version == 2
        reading.__exit__(None, None, None)
        [output] = await old.batcher.infer([SEQUENCE], timeout_seconds=30)  # the late request is answered
        await asyncio.wait_for(unload, 30)
        assert old.state == "unloaded" and old.batcher is None and old.runtime is None
        np.testing.assert_allclose(softmax(output), two_versions.expected[1](SEQUENCE.tolist()), atol=1e-4, rtol=0)
        with pytest.raises(VersionNotFound, match="is unloaded"):
            registry.resolve("swap", "1")
        assert (await answer(registry))[0] == 2
        assert await registry.index() == [
            IndexEntry("swap", 1, "unloaded", "unloaded"),
            IndexEntry("swap", 2, "ready", ""),
        ]
        await registry.load_version("swap", "1")  # on disk still: loads again
        assert registry.resolve("swap", "1").state == "ready" and registry.default_version("swap") == 2

    with_registry(root, check)


def test_a_failed_load_leaves_the_served_versions_alone(two_versions: TwoVersions, tmp_path: Path) -> None:
    root = repository_with(two_versions, tmp_path, 1)

    async def check(registry: ModelRegistry) -> None:
        broken = root / "swap" / "3"
        shutil.copytree(two_versions.staging / "swap" / "2", broken)  # model.json says version 2
        with pytest.raises(LoadFailed, match=r"swap/3: model.json names swap/2 but lies in swap/3"):
            await registry.load_model("swap")
        assert registry.resolve("swap").version == 1 and (await answer(registry))[0] == 1
        assert registry.readiness() == (True, []), "a later load's failure does not take the replica out"
        assert (await registry.index())[-1] == IndexEntry("swap", 3, "failed", registry.lookup("swap", 3).error or "")
        with pytest.raises(ModelNotFound):
            await registry.load_model("absent")
        with pytest.raises(VersionNotFound):
            await registry.load_version("swap", "9")

        spec = json.loads((broken / "model.json").read_text())
        (broken / "model.json").write_text(json.dumps({**spec, "version": 3}))
        await registry.load_version("swap", "3")  # fixed on disk: served, and the default
        assert registry.resolve("swap").version == 3

        await registry.unload_model("swap")
        assert {v.state for v in registry.model_versions("swap").values()} == {"unloaded"}
        with pytest.raises(ModelNotFound, match="not loaded"):
            registry.resolve("swap")
        assert registry.readiness() == (True, [])

        shutil.rmtree(root / "swap" / "1")
        await registry.load_model("swap")  # serves what is on disk: 3 again; 1 is gone, so forgotten
        assert sorted(registry.model_versions("swap")) == [3] and registry.resolve("swap").version == 3

    with_registry(root, check)


def test_the_poll_follows_the_directory(two_versions: TwoVersions, tmp_path: Path) -> None:
    root = repository_with(two_versions, tmp_path, 1)

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(3000):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the poll did not get there in 30 s")

    async def check(registry: ModelRegistry) -> None:
        publish(two_versions, root, 2)
        await until(lambda: registry.default_version("swap") == 2)
        assert (await answer(registry))[0] == 2
        shutil.rmtree(root / "swap" / "1")
        await until(lambda: 1 not in registry.model_versions("swap"))
        assert [(e.version, e.state) for e in await registry.index()] == [(2, "ready")]

        await registry.unload_version("swap", "2")
        await asyncio.sleep(0.3)
        assert registry.lookup("swap", 2).state == "unloaded", "the poll does not undo an unload"

        broken = root / "swap" / "3"
        broken.mkdir()  # a version directory still being written: fails, retried once it changes
        await until(lambda: 3 in registry.model_versions("swap") and registry.lookup("swap", 3).state == "failed")
        assert registry.readiness()[0]
        shutil.rmtree(broken)
        shutil.copytree(two_versions.staging / "swap" / "2", broken)
        spec = json.loads((broken / "model.json").read_text())
        (broken / "model.json").write_text(json.dumps({**spec, "version": 3}))
        await until(lambda: registry.default_version("swap") == 3)

    with_registry(root, check, repository_poll_seconds=0.05)


def test_no_change_while_draining(two_versions: TwoVersions, tmp_path: Path) -> None:
    root = repository_with(two_versions, tmp_path, 1)

    async def check(registry: ModelRegistry) -> None:
        registry.begin_drain()
        with pytest.raises(Draining):
            await registry.load_model("swap")
        with pytest.raises(Draining):
            await registry.unload_version("swap", "1")

    with_registry(root, check)
