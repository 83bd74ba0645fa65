"""Loading a repository: every entry loaded or failed with its reason; lookups; readiness."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from service.errors import InvalidInput, ModelNotFound, ModelNotReady, VersionNotFound
from service.metrics import Metrics
from service.queue_totals import QueueTable, queue_key, table_size
from service.registry import ModelRegistry
from service.settings import Settings
from tests.service.conftest import BuiltRepository

T = TypeVar("T")


def copy_of(repository: BuiltRepository, tmp_path: Path, *names: str) -> Path:
    root = tmp_path / "repository"
    for name in names:
        shutil.copytree(repository.path / name, root / name)
    return root


def with_registry(root: Path, check: Callable[[ModelRegistry], Awaitable[T]], **settings: Any) -> T:
    async def scenario() -> T:
        registry = ModelRegistry(Settings(repository=root, **settings), Metrics())
        registry.start()
        try:
            while registry.readiness()[1] and "loading models" in registry.readiness()[1]:
                await asyncio.sleep(0.01)
            return await check(registry)
        finally:
            await registry.stop()

    return asyncio.run(asyncio.wait_for(scenario(), 120))


def test_a_broken_entry_is_listed_and_keeps_readiness_off(test_repository: BuiltRepository, tmp_path: Path) -> None:
    root = copy_of(test_repository, tmp_path, "equal", "feat")
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.json").write_text("{}")

    async def check(registry: ModelRegistry) -> None:
        ready, reasons = registry.readiness()
        assert not ready and len(reasons) == 1 and reasons[0].startswith("broken/1 failed: model.json is invalid")
        assert registry.resolve("equal").state == "ready"
        assert registry.resolve("feat").version == 2, "the highest version serves by default"
        assert registry.resolve("feat", "1").version == 1
        with pytest.raises(ModelNotReady, match="broken/1 failed to load"):
            registry.resolve("broken")
        with pytest.raises(ModelNotFound):
            registry.resolve("nope")
        with pytest.raises(ModelNotFound):
            registry.resolve("../etc")
        with pytest.raises(VersionNotFound):
            registry.resolve("feat", "3")
        with pytest.raises(VersionNotFound):
            registry.resolve("feat", "01x")

    with_registry(root, check)


def test_runtime_preference_and_fallback(test_repository: BuiltRepository, tmp_path: Path) -> None:
    root = copy_of(test_repository, tmp_path, "equal", "feat")

    async def check(registry: ModelRegistry) -> None:
        assert registry.readiness() == (True, [])
        feat, equal = registry.resolve("feat"), registry.resolve("equal")
        assert feat.runtime is not None and feat.runtime.name == "torchscript"
        assert equal.runtime is not None and equal.runtime.name == "onnx", "equal has no TorchScript file"

    with_registry(root, check, runtime="torchscript")


def test_torchscript_entries_are_skipped_without_torch(
    test_repository: BuiltRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    root = copy_of(test_repository, tmp_path, "feat")
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "service.runtime.torchscript", raising=False)

    async def check(registry: ModelRegistry) -> None:
        feat = registry.resolve("feat")
        assert feat.runtime is not None and feat.runtime.name == "onnx"

    with caplog.at_level("INFO"):
        with_registry(root, check, runtime="torchscript")
    assert "skipping torchscript (torch is not installed" in caplog.text


def test_a_graph_that_disagrees_with_model_json_fails_to_load(test_repository: BuiltRepository, tmp_path: Path) -> None:
    root = copy_of(test_repository, tmp_path, "equal")
    spec_path = root / "equal" / "1" / "model.json"
    spec = json.loads(spec_path.read_text())
    spec["labels"] = ["a", "b", "c"]
    spec_path.write_text(json.dumps(spec))

    async def check(registry: ModelRegistry) -> None:
        ready, [reason] = registry.readiness()
        assert not ready and "expected [2, 3] (3 labels)" in reason

    with_registry(root, check)


def test_an_empty_repository_is_never_ready(tmp_path: Path) -> None:
    async def check(registry: ModelRegistry) -> None:
        assert registry.readiness() == (False, ["no models in the repository"])
        with pytest.raises(ModelNotFound):
            registry.resolve(None)

    with_registry(tmp_path, check)


def test_draining_turns_readiness_off(test_repository: BuiltRepository, tmp_path: Path) -> None:
    root = copy_of(test_repository, tmp_path, "equal")

    async def check(registry: ModelRegistry) -> None:
        assert registry.readiness()[0]
        registry.begin_drain()
        assert registry.readiness() == (False, ["draining"])
        await registry.drain()

    with_registry(root, check)


def test_with_a_queue_table_a_version_holds_the_whole_limits_or_its_share_without_a_row(
    test_repository: BuiltRepository, tmp_path: Path
) -> None:
    # The HTTP processes hold the queue limits together through their table; a version with no row there (one a
    # repository poll found after the start) keeps to its process's share, as nobody else sees its queue.
    root = copy_of(test_repository, tmp_path, "feat")
    keys = [queue_key("feat", 1), queue_key("feat", 1, streams=True)]
    cells = multiprocessing.get_context("spawn").RawArray("q", table_size(keys, 2))
    six = {"inputs": [[[0.5] * 5] for _ in range(6)]}

    async def scenario() -> None:
        registry = ModelRegistry(Settings(repository=root, max_queue=10), Metrics())
        registry.queues = QueueTable(cells, keys, 1, 2)
        registry.start()
        try:
            while registry.readiness()[1] and "loading models" in registry.readiness()[1]:
                await asyncio.sleep(0.01)
            assert len(registry.resolve("feat", "1").validator.predict_document(six)) == 6
            with pytest.raises(InvalidInput, match="6 sequences, at most 5 per request"):
                registry.resolve("feat", "2").validator.predict_document(six)
            # feat/1's queue publishes into its row (row 0), in this process's cells (process 1 of 2)
            batcher = registry.resolve("feat", "1").batcher
            assert batcher is not None
            request = batcher.watch([np.zeros((3, 5), np.float32)] * 2, timeout_seconds=30)
            assert list(cells[:4]) == [0, 0, 2, 6]  # queued: 2 sequences of 3 steps; process 0's cells untouched
            await request.future
            assert list(cells[:4]) == [0, 0, 0, 0]
        finally:
            await registry.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))
