"""Alembic's entry point for fluid's store: migrations run on the connection infra/records/
schema.py hands over (under its lock), or, for `alembic` commands a developer runs, on the
configured database."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from infra.records import store  # noqa: F401 (defines the tables autogenerate compares)
from infra.settings import get_settings


def run(connection: Connection) -> None:
    """Run the pending migrations on `connection`, in its transaction if it has one."""
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite alters a table by copying it; batch mode does that where an ALTER cannot.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    run(given)
else:
    with create_engine(get_settings().db_url).connect() as conn:
        run(conn)
