"""The store works on SQLite by default and on PostgreSQL by setting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import select

from infra.records import store
from infra.settings import FluidSettings
from tests.conftest import fresh_postgres_database


def _roundtrip(settings: FluidSettings) -> None:
    now = datetime.now(UTC)
    with store.session(settings) as s:
        s.add(
            store.SandboxRecord(
                id="rt",
                domain_name="fluid-sbx-rt",
                image="debian-12",
                image_version="v1",
                network="nat",
                ssh_port=22222,
                disk_path="/x",
                console_log="/y",
                expires_at=now + timedelta(hours=2),
            )
        )
        s.add(
            store.CommandRecord(
                sandbox_id="rt",
                command="echo hi",
                exit_status=0,
                stdout="hi\n",
                started_at=now,
                ended_at=now,
                actor="test",
            )
        )
    with store.session(settings) as s:
        rec = s.get(store.SandboxRecord, "rt")
        assert rec is not None and rec.ssh_port == 22222
        cmds = s.exec(select(store.CommandRecord).where(store.CommandRecord.sandbox_id == "rt"))
        assert [c.stdout for c in cmds] == ["hi\n"]
        s.delete(rec)


def test_sqlite_under_fluid_home_by_default(tmp_path):
    settings = FluidSettings(home=tmp_path / "home")
    assert settings.db_url == f"sqlite:///{tmp_path / 'home' / 'fluid.db'}"
    _roundtrip(settings)
    assert (tmp_path / "home" / "fluid.db").exists()


@pytest.fixture(scope="module")
def postgres_url() -> str:
    """A real PostgreSQL on loopback: FLUID_TEST_POSTGRES_URL, or the local cluster."""
    return fresh_postgres_database("fluid_test")


def test_postgresql_by_setting(postgres_url, tmp_path):
    _roundtrip(FluidSettings(home=tmp_path, database_url=postgres_url))
