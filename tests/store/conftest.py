"""The store tests use the `database` fixture of tests/conftest.py: SQLite and a fresh PostgreSQL database."""
