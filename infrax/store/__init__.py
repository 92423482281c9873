"""Persistence: SQLAlchemy Core over SQLite or PostgreSQL."""

from infrax.store.database import Database, StoreError, aware

__all__ = ["Database", "StoreError", "aware"]
