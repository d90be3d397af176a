"""Alembic migrations: the only way the schema changes (`autocompress db upgrade`)."""
