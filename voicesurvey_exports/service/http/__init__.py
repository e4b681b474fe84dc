"""The seed's HTTP endpoints: a FastAPI router the app mounts, and a standalone service."""

from .app import build_export_router, create_app

__all__ = ["build_export_router", "create_app"]
