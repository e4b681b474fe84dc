"""The seed's HTTP endpoints: a FastAPI router the app mounts, and a standalone service."""

from .app import create_app, router
from .body_guard import BodyGuard

__all__ = ["BodyGuard", "create_app", "router"]
