"""The HTTP edge: the only package of the server that imports FastAPI."""

from service.api.app import create_app
from service.api.fastpath import InferenceFastPath

__all__ = ["InferenceFastPath", "create_app"]
