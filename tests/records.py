"""Store records made directly, for tests about whose records a host sees: a sandbox on
another host, an expired one, a spare, a lost one. No VM stands behind them. And databases
as the previous release (0140cc1, before migrations) created them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, create_engine

from infra.records import store
from infra.records.store import SandboxRecord
from infra.settings import FluidSettings
from tests.conftest import fresh_postgres_database

PREVIOUS_RELEASE = Path(__file__).parent / "infra" / "records"


def add_sandbox_record(
    sid: str,
    host: str | None,
    settings: FluidSettings | None = None,
    *,
    port: int = 0,
    expired: bool = False,
    spare: str | None = None,
    owner_pid: int | None = None,
    lost: str | None = None,
) -> SandboxRecord:
    """A sandbox record of host `host` (None: from before fluid knew hosts), made an hour ago."""
    now = datetime.now(UTC)
    rec = SandboxRecord(
        id=sid,
        host_id=host,
        domain_name=f"fluid-sbx-{sid}",
        image="debian-12",
        image_version="v1",
        network="nat",
        ssh_port=port,
        disk_path=f"/nonexistent/{sid}.qcow2",
        console_log=f"/nonexistent/{sid}.log",
        created_at=now - timedelta(hours=1),
        expires_at=now - timedelta(minutes=1) if expired else now + timedelta(hours=1),
        owner_run="00000000-0000-0000-0000-000000000001" if owner_pid else None,
        owner_pid=owner_pid,
        owner_pid_start=1 if owner_pid else None,
        spare_state=spare,
        lost=lost,
    )
    with store.session(settings) as s:
        s.add(rec)
    return rec


def database(kind: str, tmp_path: Path, name: str) -> str:
    """The URL of a new, empty database of `kind`."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / f'{name}.db'}"
    return fresh_postgres_database(name)


def previous_release(kind: str, tmp_path: Path, name: str) -> Engine:
    """A database as the previous release (0140cc1) created it, from its checked-in DDL."""
    engine = create_engine(database(kind, tmp_path, name))
    lines = (PREVIOUS_RELEASE / f"previous_release.{kind}.sql").read_text().splitlines()
    ddl = "\n".join(line for line in lines if not line.startswith("--"))
    with engine.begin() as conn:
        for statement in filter(str.strip, ddl.split(";")):
            conn.exec_driver_sql(statement)
    return engine
