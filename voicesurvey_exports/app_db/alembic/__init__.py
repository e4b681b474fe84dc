"""The app schema's Alembic environment and revisions (a package so wheels ship it)."""
