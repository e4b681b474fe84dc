"""Dagster resources of the export domain (built once in definitions.py; tests pass their own)."""

import dagster as dg
from sqlalchemy import Engine

from ..app_db.engine import get_engine


class AppDatabase(dg.ConfigurableResource):
    """The VoiceSurveyAgent app database (PostgreSQL, or SQLite for the local demo)."""

    database_url: str

    @property
    def engine(self) -> Engine:
        return get_engine(self.database_url)


class ExportDestination(dg.ConfigurableResource):
    """Where export files go and how long their download links live."""

    bucket: str
    prefix: str = "exports/"
    url_ttl_seconds: int = 3600
    # SSE-KMS key for the objects; unset means SSE-S3 (AES256).
    kms_key_id: str | None = None
    # Files (and their links) are deleted this many days after the export completed.
    retention_days: int = 30
