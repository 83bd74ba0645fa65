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


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.seqserve
    return state
