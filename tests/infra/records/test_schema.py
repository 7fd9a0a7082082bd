"""fluid's store is brought to the newest schema by Alembic migrations: once per change, by one
process however many start together; a database the previous release made keeps its rows and
gains the new columns, indexes and tables; what the migrations build is exactly the models."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text
from sqlmodel import SQLModel

from infra.errors import SchemaError
from infra.records import schema, store  # noqa: F401 (store defines the tables)
from tests.records import database, previous_release

STARTERS = 6
KINDS = ["sqlite", "postgresql"]


def differences(engine: Engine) -> list:
    """What Alembic's autogenerate finds between the database and fluid's models."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, SQLModel.metadata)


def _start(url: str, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue):
    engine = create_engine(url)
    barrier.wait()
    out.put(schema.upgrade(engine))


def upgraded_together(url: str) -> list[bool]:
    """What `schema.upgrade` returned in each of STARTERS processes started at one moment."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(STARTERS), ctx.Queue()
    procs = [ctx.Process(target=_start, args=(url, barrier, out)) for _ in range(STARTERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0, "a process opening the store failed"
    return [out.get(timeout=5) for _ in procs]


def test_head_names_the_newest_migration() -> None:
    config = Config()
    config.set_main_option("script_location", str(schema.MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [schema.HEAD]


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_database_is_migrated_to_exactly_the_models(kind: str, tmp_path: Path) -> None:
    engine = create_engine(database(kind, tmp_path, "fluid_schema_new"))

    assert schema.upgrade(engine) is True

    assert schema.revision(engine) == schema.HEAD
    assert differences(engine) == []


@pytest.mark.parametrize("kind", KINDS)
def test_processes_starting_together_migrate_once(kind: str, tmp_path: Path) -> None:
    url = database(kind, tmp_path, "fluid_schema_race")

    results = upgraded_together(url)

    assert results.count(True) == 1
    engine = create_engine(url)
    assert schema.revision(engine) == schema.HEAD
    # Nothing left to do for the next process.
    assert schema.upgrade(engine) is False


@pytest.mark.parametrize("kind", KINDS)
def test_processes_starting_together_on_a_previous_release_database_migrate_it_once(
    kind: str, tmp_path: Path
) -> None:
    engine = previous_release(kind, tmp_path, "fluid_schema_old_race")

    results = upgraded_together(engine.url.render_as_string(hide_password=False))

    assert results.count(True) == 1
    assert differences(engine) == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_previous_release_database_keeps_its_rows_and_gains_the_new_schema(
    kind: str, tmp_path: Path
) -> None:
    engine = previous_release(kind, tmp_path, "fluid_schema_old")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sandboxes (id, domain_name, image, image_version, network, ssh_port,"
                " disk_path, console_log, created_at, expires_at, owner_run) VALUES ('0ld00001',"
                " 'fluid-sbx-0ld00001', 'debian-12', 'v1', 'nat', 22222, '/d', '/c',"
                " '2026-01-01 00:00:00+00', '2026-01-02 00:00:00+00', 'run-1')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO agent_runs (flow_run_id, task, production, status, attempts, message,"
                " started_at, updated_at) VALUES ('run-1', 'install nginx', 'web', 'applied', 1,"
                " '', '2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00')"
            )
        )
    assert schema.revision(engine) is None

    assert schema.upgrade(engine) is True

    assert schema.revision(engine) == schema.HEAD
    assert differences(engine) == []
    insp = inspect(engine)
    assert {"host_id", "lost"} <= {c["name"] for c in insp.get_columns("sandboxes")}
    assert "ix_sandboxes_host_id" in {i["name"] for i in insp.get_indexes("sandboxes")}
    assert {"hosts", "images", "image_parts", "image_copies"} <= set(insp.get_table_names())
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, owner_run, host_id FROM sandboxes")).all() == [
            ("0ld00001", "run-1", None)
        ]
        assert conn.execute(text("SELECT flow_run_id, status FROM agent_runs")).all() == [
            ("run-1", "applied")
        ]


def test_a_database_made_before_alembic_by_a_later_build_is_adopted(tmp_path: Path) -> None:
    """Builds between the previous release and Alembic made (parts of) the new schema with
    create_all and kept a fingerprint table; the migrations add only what is missing."""
    engine = create_engine(database("sqlite", tmp_path, "between"))
    SQLModel.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE image_copies"))
        conn.execute(text("CREATE TABLE fluid_schema (id VARCHAR PRIMARY KEY)"))

    assert schema.upgrade(engine) is True

    assert differences(engine) == []
    assert "fluid_schema" not in inspect(engine).get_table_names()


def test_a_database_a_newer_fluid_migrated_is_refused_with_what_to_do(tmp_path: Path) -> None:
    engine = create_engine(database("sqlite", tmp_path, "newer"))
    schema.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))

    with pytest.raises(SchemaError, match="upgrade fluid"):
        schema.upgrade(engine)
