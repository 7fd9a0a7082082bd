"""fluid's schema, applied once per change of it, not by every process that opens the store.

Every process that opens the store compares the schema it was built with (a fingerprint of
its tables, columns and indexes) with the one the database records. Only when they differ does
it take the schema lock (a PostgreSQL advisory lock, held by its transaction, or an flock
beside an SQLite file), look again (another process may have done the work meanwhile), create
the missing tables and indexes, add the missing nullable columns, and record the fingerprint.
Many hosts starting at once against one PostgreSQL therefore never race on the DDL.
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, inspect, select, text
from sqlalchemy.engine import Connection

from infra.host.file_locks import FileLock

# Any 64-bit number that no other application on a shared PostgreSQL is likely to lock.
ADVISORY_LOCK_KEY = 0x666C756964  # "fluid"

VERSION_TABLE = Table(
    "fluid_schema",
    MetaData(),
    Column("id", String, primary_key=True),
    Column("fingerprint", String, nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


def fingerprint(metadata: MetaData) -> str:
    """A digest of every table's columns (name, type, nullability) and indexes."""
    parts = []
    for table in sorted(metadata.sorted_tables, key=lambda t: t.name):
        for c in table.columns:
            parts.append(f"{table.name}.{c.name}:{c.type!r}:{c.nullable}")
        parts += sorted(f"{table.name}#{i.name}" for i in table.indexes)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def recorded(engine: Engine) -> str | None:
    """The fingerprint the database was last brought to, or None."""
    if not inspect(engine).has_table(VERSION_TABLE.name):
        return None
    with engine.connect() as conn:
        return conn.execute(select(VERSION_TABLE.c.fingerprint)).scalar()


def _file_lock(engine: Engine) -> AbstractContextManager[object]:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return nullcontext()
    return FileLock(Path(database).with_name(Path(database).name + ".schema-lock"), wait=True)


def apply(engine: Engine, metadata: MetaData) -> bool:
    """Bring the database to `metadata`'s schema unless it is there; True when DDL ran."""
    want = fingerprint(metadata)
    if recorded(engine) == want:
        return False
    with _file_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        VERSION_TABLE.create(conn, checkfirst=True)
        have = conn.execute(select(VERSION_TABLE.c.fingerprint)).scalar()
        if have == want:
            return False
        metadata.create_all(conn)
        _add_missing_columns(conn, metadata)
        conn.execute(VERSION_TABLE.delete())
        conn.execute(
            VERSION_TABLE.insert().values(
                id="fluid", fingerprint=want, applied_at=datetime.now(UTC)
            )
        )
    return True


def _add_missing_columns(conn: Connection, metadata: MetaData) -> None:
    """Add the columns newer fluid versions introduced (all nullable) to existing tables, and
    the indexes on them."""
    insp = inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in insp.get_columns(table.name)}
        added = set()
        for col in table.columns:
            if col.name not in have and col.nullable:
                ddl = col.type.compile(conn.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {ddl}'))
                added.add(col.name)
        indexed = {i["name"] for i in insp.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexed and {c.name for c in index.columns} & added:
                index.create(conn)
