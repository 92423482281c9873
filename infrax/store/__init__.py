"""Persistence: SQLAlchemy Core over SQLite or PostgreSQL."""

from infrax.store.database import Conflict, Database, InvalidData, StoreError, aware, sqlite_path

__all__ = ["Conflict", "Database", "InvalidData", "StoreError", "aware", "sqlite_path"]
