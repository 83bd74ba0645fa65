"""The HTTP edge: the only package of the server that imports FastAPI."""

from service.api.app import create_app

__all__ = ["create_app"]
