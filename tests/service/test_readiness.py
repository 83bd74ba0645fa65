"""The readiness contract with a broken entry, both ways (`strict_readiness`).

On (the default): ready only when every version loaded; see test_registry.py and
api/test_health.py. Off: ready once loading has finished and at least one version is
ready; the failed versions are still named, and their requests still get 503.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from service.errors import ModelNotReady
from service.registry import ModelRegistry
from service.settings import Settings
from tests.service.api.conftest import run_server, sample_value, wait_until
from tests.service.conftest import BuiltRepository
from tests.service.test_registry import copy_of, with_registry


def with_broken_entry(root: Path) -> Path:
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.json").write_text('{"schema_version": 1}')
    return root


def test_strict_readiness_is_the_default() -> None:
    assert Settings().strict_readiness is True


def test_not_strict_a_broken_entry_is_named_but_the_others_make_the_server_ready(
    test_repository: BuiltRepository, tmp_path: Path
) -> None:
    root = with_broken_entry(copy_of(test_repository, tmp_path, "equal"))

    async def check(registry: ModelRegistry) -> None:
        ready, reasons = registry.readiness()
        assert ready and len(reasons) == 1 and reasons[0].startswith("broken/1 failed: model.json is invalid")
        assert registry.resolve("equal").state == "ready"
        with pytest.raises(ModelNotReady, match="broken/1 failed to load"):
            registry.resolve("broken")
        registry.begin_drain()
        ready, reasons = registry.readiness()
        assert not ready and reasons[0] == "draining" and reasons[1].startswith("broken/1 failed")
        await registry.drain()

    with_registry(root, check, strict_readiness=False)


def test_not_strict_a_repository_with_nothing_loadable_is_never_ready(tmp_path: Path) -> None:
    root = with_broken_entry(tmp_path / "repository")

    async def check(registry: ModelRegistry) -> None:
        ready, reasons = registry.readiness()
        assert not ready and reasons[0] == "no model version loaded" and reasons[1].startswith("broken/1 failed")

    with_registry(root, check, strict_readiness=False)
    (tmp_path / "empty").mkdir()
    with_registry(tmp_path / "empty", _never_ready, strict_readiness=False)


async def _never_ready(registry: ModelRegistry) -> None:
    assert registry.readiness() == (False, ["no models in the repository"])


def test_not_strict_over_http_readiness_turns_on_once_loading_ends_and_the_broken_entry_gets_503(
    test_repository: BuiltRepository, tmp_path: Path
) -> None:
    root = tmp_path / "repository"
    shutil.copytree(test_repository.path / "equal", root / "equal")
    with_broken_entry(root)
    with run_server(root, "--no-strict-readiness", log_dir=tmp_path, wait_ready=False) as running:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            wait_until(lambda: client.get("/readyz").status_code == 200)
            assert client.get("/readyz").json()["ready"] is True
            assert client.get("/readyz").json()["reasons"][0].startswith("broken/1 failed")
            assert client.get("/v2/health/ready").json()["ready"] is True
            assert sample_value(running.metrics(), "seqserve_ready") == 1
            listing = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
            assert listing["broken"]["versions"][0]["state"] == "failed"
            assert listing["broken"]["default_version"] is None
            assert "model.json is invalid" in listing["broken"]["versions"][0]["error"]
            assert listing["equal"]["versions"][0]["state"] == "ready"
            assert client.post("/v1/models/equal/predict", json={"inputs": [[[1, 2, 3]]]}).status_code == 200
            failed = client.post("/v1/models/broken/predict", json={"inputs": [[[1, 2, 3]]]})
            assert failed.status_code == 503 and failed.json()["error"]["code"] == "model_not_ready"
            assert client.get("/v2/models/broken/ready").status_code == 503
        assert "broken/1 failed to load" in running.log()
