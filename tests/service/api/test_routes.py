"""The inference route table: FastAPI's routes and the fast path are both built from it, and answer alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import compile_path
from starlette.types import ASGIApp

from service.api import InferenceFastPath, create_app
from service.api.routes import INFERENCE_ROUTES, path_pattern
from service.settings import Settings

PATHS = [route.path.format(name="nope", version="1", stream="s1") for route in INFERENCE_ROUTES]


def app(repository: Path, **settings: str) -> FastAPI:
    return create_app(Settings(repository=repository, **settings))  # lifespan not run: nothing loads


def post(target: ASGIApp, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=target)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.post(path, json={"inputs": [[[1.0]]]}, headers=headers)

    return asyncio.run(send())


def test_the_fast_path_matches_exactly_the_inference_routes_fastapi_declares(tmp_path: Path) -> None:
    paths = app(tmp_path, repository_api="on").openapi()["paths"]
    posts = {path for path, operations in paths.items() if "post" in operations}
    assert {p for p in posts if not p.startswith("/v2/repository/")} == {r.path for r in INFERENCE_ROUTES}
    for route in INFERENCE_ROUTES:  # the regex Starlette routes by, and the fast path's
        assert compile_path(route.path)[0].pattern == f"^{path_pattern(route.path).pattern}$"


@pytest.mark.parametrize("path", PATHS)
def test_fastapi_and_the_fast_path_answer_alike(tmp_path: Path, path: str) -> None:
    served = app(tmp_path)
    direct, fast = post(served, path), post(InferenceFastPath(served), path)
    assert direct.status_code == fast.status_code == 404
    assert direct.json() == fast.json()
    assert ("code" in direct.json()) == path.startswith("/v2/")  # the V2 error shape under /v2


@pytest.mark.parametrize("path", PATHS)
def test_both_check_the_api_key(tmp_path: Path, path: str) -> None:
    served = app(tmp_path, api_key="s3cret")
    for target in (served, InferenceFastPath(served)):
        denied = post(target, path)
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        assert post(target, path, {"X-API-Key": "s3cret"}).status_code == 404
