"""Alembic schema history of the studio database; `store.upgrade()` applies it."""
