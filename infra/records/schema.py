"""fluid's schema version: Alembic migrations (infra/records/migrations/) bring a database to
HEAD once per change of it, not by every process that opens the store.

Every process that opens the store reads the revision the database records. Only when it is
not HEAD does it take the schema lock (a PostgreSQL advisory lock, held by the migration's
transaction, or an flock beside an SQLite file), read it again (another process may have done
the work meanwhile) and run the pending migrations. Many hosts starting at once against one
PostgreSQL therefore never race on the DDL. A database fluid made before it used Alembic (its
tables but no alembic_version) is first stamped at BASELINE, the previous release's schema.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import Connection

from infra.errors import SchemaError
from infra.host.file_locks import FileLock

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest revision in MIGRATIONS/versions (a test holds the two equal): the fast path needs
# no Alembic import, which costs every short-lived `fluid` command tens of milliseconds.
HEAD = "0002"
# The schema of the release before migrations (0140cc1): what a database without
# alembic_version but with fluid's tables is taken to be.
BASELINE = "0001"
VERSION_TABLE = "alembic_version"
# Any 64-bit number that no other application on a shared PostgreSQL is likely to lock.
ADVISORY_LOCK_KEY = 0x666C756964  # "fluid"


def revision(engine: Engine) -> str | None:
    """The revision the database was last brought to, or None (new, or made before Alembic)."""
    with engine.connect() as conn:
        return _revision(conn)


def _revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def _file_lock(engine: Engine) -> AbstractContextManager[object]:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return nullcontext()
    return FileLock(Path(database).with_name(Path(database).name + ".schema-lock"), wait=True)


def upgrade(engine: Engine) -> bool:
    """Bring the database to HEAD unless it is there; True when migrations ran."""
    if revision(engine) == HEAD:
        return False
    # Alembic is imported only by the process that migrates (see HEAD).
    from alembic import command
    from alembic.config import Config
    from alembic.util import CommandError

    with _file_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        have = _revision(conn)
        if have == HEAD:
            return False
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        # env.py runs the migrations on this connection, inside this transaction (and lock).
        config.attributes["connection"] = conn
        try:
            if have is None and inspect(conn).has_table("sandboxes"):
                command.stamp(config, BASELINE)
            command.upgrade(config, "head")
        except CommandError as e:
            raise SchemaError(
                f"fluid cannot upgrade the store at {engine.url.render_as_string()}: {e} "
                "(a newer fluid may have migrated it: upgrade fluid here too)"
            ) from e
    return True
