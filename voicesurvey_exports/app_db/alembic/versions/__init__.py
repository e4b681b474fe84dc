"""Alembic revisions V0001, V0002, ... (a package so wheels ship them; Alembic skips this file)."""
