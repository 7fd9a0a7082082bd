"""`fluid db upgrade`: bring fluid's store to the schema this fluid needs (Alembic migrations,
infra/records/schema.py). Imports no Prefect module."""

from __future__ import annotations

import argparse

from cli.args import add_command, add_noun
from cli.output import emit_line
from infra.records import schema, store
from infra.settings import get_settings


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Run the pending migrations (opening the store does) and print the revision reached."""
    settings = get_settings()
    engine = store.engine(settings)
    at = schema.revision(engine)
    url = engine.url.render_as_string()
    emit_line(
        args,
        {"database": url, "revision": at, "head": schema.HEAD},
        f"fluid's store is at revision {at} (newest: {schema.HEAD}): {url}",
    )
    return 0


def register(top: argparse._SubParsersAction) -> None:
    """`fluid db upgrade`."""
    db = add_noun(
        top,
        "db",
        "fluid's store (its database schema)",
        examples=("fluid db upgrade", "FLUID_DATABASE_URL=postgresql+psycopg://… fluid db upgrade"),
    )
    add_command(
        db,
        "upgrade",
        cmd_db_upgrade,
        "bring the store's schema up to date (safe to run while fluid runs, and from many "
        "hosts at once)",
    )
