"""The seed's HTTP endpoints: a FastAPI router the app mounts, and a standalone service."""

from .app import build_export_router, create_app
from .body_guard import BodyGuard

__all__ = ["BodyGuard", "build_export_router", "create_app"]
