"""create_app(settings): the FastAPI application over a model registry."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service import __version__
from service.api import health, repository, schemas, streams, v1, v2
from service.api.auth import API_KEY
from service.api.errors import install_handlers
from service.api.routes import INFER, PREDICT, STREAM, inference_router
from service.api.state import AppState
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings
from service.streams.service import StreamService

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, metrics: Metrics | None = None, streams_forwarded: bool = False) -> FastAPI:
    """The app; `streams_forwarded`: this process forwards stream requests to the one holding the streams."""
    metrics = metrics if metrics is not None else Metrics()
    registry = ModelRegistry(settings, metrics)
    stream_service = StreamService.from_settings(settings, metrics, forwarded=streams_forwarded)
    registry.streams = stream_service
    api_key = settings.api_key.get_secret_value().encode() if settings.api_key is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry.start()
        stream_service.start()
        try:
            yield
        finally:
            # After SIGTERM the runner has drained already (the grace period is not
            # counted twice); this covers other shutdowns.
            await registry.drain()
            await registry.stop()
            await stream_service.stop()

    app = FastAPI(
        title="seqserve",
        version=__version__,
        description="Exact dynamic micro-batching for LSTM, BiLSTM and GRU sequence models.",
        lifespan=lifespan,
    )
    app.state.seqserve = AppState(
        settings=settings, registry=registry, metrics=metrics, api_key=api_key, streams=stream_service
    )
    install_handlers(app)
    app.add_middleware(HeadAsGet)
    app.include_router(health.router)
    app.include_router(v2.health)
    app.include_router(inference_router(PREDICT))
    app.include_router(v1.router)
    app.include_router(v2.router)
    app.include_router(inference_router(INFER))
    app.include_router(inference_router(STREAM))
    app.include_router(streams.router, dependencies=[API_KEY])
    app.include_router(repository.router(settings))
    _describe_request_bodies(app, api_key_required=api_key is not None)
    return app


class HeadAsGet:
    """HEAD is routed as GET: every GET route answers it with the status and headers GET would have; uvicorn, whose
    scope still says HEAD, sends no body. The OpenAPI schema stays one operation per route (FastAPI would list a
    declared HEAD as an operation of its own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


def _describe_request_bodies(app: FastAPI, *, api_key_required: bool) -> None:
    """Bodies are parsed by hand (fast); put their models into the OpenAPI components. The routes
    declare the API key's headers (`auth.API_KEY`, `auth.API_KEY_SCHEMA`); a server without a key
    documents none."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in schemas.REQUEST_MODELS:
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(body.pop("$defs", {}))
            components[model.__name__] = body
        if not api_key_required:
            schema["components"].pop("securitySchemes", None)
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation.pop("security", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
