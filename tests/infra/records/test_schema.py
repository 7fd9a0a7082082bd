"""fluid's schema is applied once per change, by one process, however many start together; an
older database gets the new columns and their indexes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

from infra.records import schema, store  # noqa: F401 (store defines the tables)
from tests.conftest import fresh_postgres_database

STARTERS = 6


def _start(url: str, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue):
    engine = create_engine(url)
    barrier.wait()
    out.put(schema.apply(engine, SQLModel.metadata))


def applied_together(url: str) -> list[bool]:
    """What `schema.apply` returned in each of STARTERS processes started at one moment."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(STARTERS), ctx.Queue()
    procs = [ctx.Process(target=_start, args=(url, barrier, out)) for _ in range(STARTERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0, "a process opening the store failed"
    return [out.get(timeout=5) for _ in procs]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_processes_starting_together_apply_the_schema_once(kind: str, tmp_path: Path) -> None:
    url = (
        f"sqlite:///{tmp_path / 'fluid.db'}"
        if kind == "sqlite"
        else fresh_postgres_database("fluid_schema_race")
    )

    results = applied_together(url)

    assert results.count(True) == 1
    engine = create_engine(url)
    assert schema.recorded(engine) == schema.fingerprint(SQLModel.metadata)
    assert {t.name for t in SQLModel.metadata.sorted_tables} <= set(
        inspect(engine).get_table_names()
    )
    # Nothing left to do for the next process.
    assert schema.apply(engine, SQLModel.metadata) is False


def test_an_older_database_gets_the_new_columns_and_their_indexes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        # The sandboxes table as fluid made it before it knew hosts.
        conn.execute(
            text(
                "CREATE TABLE sandboxes (id VARCHAR PRIMARY KEY, domain_name VARCHAR NOT NULL, "
                "image VARCHAR NOT NULL, image_version VARCHAR NOT NULL, network VARCHAR NOT NULL,"
                " ssh_port INTEGER NOT NULL, disk_path VARCHAR NOT NULL, "
                "console_log VARCHAR NOT NULL, created_at DATETIME NOT NULL, "
                "expires_at DATETIME NOT NULL)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO sandboxes VALUES ('0ld00001', 'fluid-sbx-0ld00001', 'debian-12', "
                "'v1', 'nat', 22222, '/d', '/c', '2026-01-01', '2026-01-02')"
            )
        )

    assert schema.apply(engine, SQLModel.metadata) is True

    columns = {c["name"] for c in inspect(engine).get_columns("sandboxes")}
    assert {"host_id", "lost", "owner_run", "spare_state"} <= columns
    assert "ix_sandboxes_host_id" in {i["name"] for i in inspect(engine).get_indexes("sandboxes")}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, host_id FROM sandboxes")).all() == [("0ld00001", None)]
