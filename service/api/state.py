"""What the HTTP edge holds for one app: settings, the model registry, metrics."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings
from service.streams.service import StreamService


@dataclass(frozen=True)
class AppState:
    settings: Settings
    registry: ModelRegistry
    metrics: Metrics
    api_key: bytes | None
    streams: StreamService


STATE_KEY = "seqserve.state"
"""Scope key under which the fast path puts the `AppState` (looked up once per request, not through the app)."""


def app_state(request: Request) -> AppState:
    state: AppState | None = request.scope.get(STATE_KEY)
    if state is None:
        state = request.app.state.seqserve
    return state
