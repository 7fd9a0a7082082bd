"""fluid's records: sandboxes, checkpoints and every command run, in SQLModel tables.

SQLite under FLUID_HOME by default; any SQLAlchemy URL (PostgreSQL included) by setting.
FLUID_HOME, the runs folder and an SQLite database (with its -wal and -shm) are root's alone
(0700/0600): they hold commands' output, guests' files and approvals.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Text, UniqueConstraint, event
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, create_engine

from infra.host.permissions import PRIVATE_FILE, private_dir
from infra.records import schema
from infra.settings import FluidSettings, get_settings


def utcnow() -> datetime:
    return datetime.now(UTC)


class SandboxRecord(SQLModel, table=True):
    """One sandbox VM and the facts needed to reach and remove it."""

    __tablename__ = "sandboxes"

    id: str = Field(primary_key=True)
    # The hypervisor host the VM lives on (infra/host/identity.py); None on records made before
    # fluid knew hosts, which count as every host's (one host was all there was).
    host_id: str | None = Field(default=None, index=True)
    domain_name: str = Field(index=True)
    image: str
    image_version: str
    agent_id: str | None = None
    network: str
    ssh_port: int
    host_key: str | None = None
    disk_path: str
    console_log: str
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    parent_id: str | None = None
    parent_checkpoint: str | None = None
    # The flow run and process that own the sandbox, so the janitor can tell a live owner
    # from a dead one. No process while a run waits (suspended) for an approval.
    owner_run: str | None = Field(default=None, index=True)
    owner_pid: int | None = None
    owner_pid_start: int | None = None
    # Warm starts: the slot whose saved VM this sandbox runs (one sandbox per slot), and
    # how it started ("warm" or "cold").
    slot: str | None = Field(default=None, index=True)
    boot: str | None = None
    # A spare, started ahead of need and not yet anyone's: "starting", then "waiting" (see
    # infra/machines/spares.py). None for every other sandbox.
    spare_state: str | None = None
    # Set when the sandbox's host was found dead (records/hosts.py mark_down): the VM may be
    # gone with its host; the host's own janitor removes what is left when it returns.
    lost: str | None = None


class CheckpointRecord(SQLModel, table=True):
    """A named internal snapshot (disk and memory) of a running sandbox."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("sandbox_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    sandbox_id: str = Field(index=True)
    name: str
    created_at: datetime = Field(default_factory=utcnow)


class CommandRecord(SQLModel, table=True):
    """Every command fluid ran in a guest, with its capped output."""

    __tablename__ = "commands"

    id: int | None = Field(default=None, primary_key=True)
    sandbox_id: str = Field(index=True)
    command: str
    exit_status: int | None = None
    stdout: str = ""
    stderr: str = ""
    timed_out: bool = False
    started_at: datetime
    ended_at: datetime
    actor: str = "user"


# The statuses a run's record ends in (infra/records/runs.py sets them).
FINAL_RUN_STATUSES = frozenset(
    {"applied", "rejected", "timed-out", "refused", "failed", "no-change", "apply-failed"}
)


class AgentRunRecord(SQLModel, table=True):
    """One agent-task flow run: what was asked, where it stands, how it ended."""

    __tablename__ = "agent_runs"

    flow_run_id: str = Field(primary_key=True)
    task: str
    production: str
    host_id: str | None = Field(default=None, index=True)
    sandbox_id: str | None = None
    status: str = "running"
    attempts: int = 0
    digest: str | None = None
    message: str = ""
    started_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class DecisionRecord(SQLModel, table=True):
    """A reviewer's (or the automatic) decision on one proposed playbook."""

    __tablename__ = "decisions"
    __table_args__ = (UniqueConstraint("flow_run_id", "attempt"),)

    id: int | None = Field(default=None, primary_key=True)
    flow_run_id: str = Field(index=True)
    attempt: int
    outcome: str  # approved | rejected | timed-out | refused
    approver: str | None = None
    automatic: bool = False
    comment: str = ""
    digest: str | None = None
    decided_at: datetime = Field(default_factory=utcnow)


class ApplyRecord(SQLModel, table=True):
    """The result of applying an approved playbook to one production host."""

    __tablename__ = "applies"

    id: int | None = Field(default=None, primary_key=True)
    flow_run_id: str = Field(index=True)
    host: str
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    digest: str
    applied_at: datetime = Field(default_factory=utcnow)


class ProductionRecord(SQLModel, table=True):
    """One persistent "production" VM (a full copy of a golden image) and how to reach it."""

    __tablename__ = "production_vms"

    name: str = Field(primary_key=True)
    host_id: str | None = Field(default=None, index=True)
    domain_name: str = Field(index=True)
    image: str
    image_version: str
    # Where its SSH forward listens (FLUID_PRODUCTION_ADDRESS); None: 127.0.0.1.
    address: str | None = None
    ssh_port: int
    host_key: str | None = None
    disk_path: str
    console_log: str
    created_at: datetime = Field(default_factory=utcnow)


class HostRecord(SQLModel, table=True):
    """One hypervisor host of the cluster: its work queue, state and capacity."""

    __tablename__ = "hosts"

    id: str = Field(primary_key=True)
    work_queue: str
    state: str = "ready"  # ready | draining | down
    max_sandboxes: int = 8
    labels: str = Field(default="{}", sa_type=Text)  # JSON object of str -> str
    domain_type: str | None = None  # kvm | qemu, as the host last found it
    last_heartbeat: datetime | None = None
    state_message: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class ImageRecord(SQLModel, table=True):
    """One image version published to the cluster's catalog (infra/records/image_catalog.py):
    named by its content address, the same on every host."""

    __tablename__ = "images"

    name: str = Field(primary_key=True)
    version: str = Field(primary_key=True)  # global version: a digest of its parts' digests
    origin_version: str  # what the publishing host calls it (v3)
    published_by: str = Field(index=True)
    published_at: datetime = Field(default_factory=utcnow)
    # The publisher's manifest (JSON): how the image boots, which each copy's manifest repeats.
    manifest: str = Field(sa_type=Text)


class ImagePartRecord(SQLModel, table=True):
    """One file of a published image version, with the digest every copy is checked against."""

    __tablename__ = "image_parts"

    name: str = Field(primary_key=True)
    version: str = Field(primary_key=True)
    file: str = Field(primary_key=True)
    size_bytes: int
    sha256: str = Field(index=True)


class ImageCopyRecord(SQLModel, table=True):
    """A host holds a verified copy of a published image version (the cluster's inventory)."""

    __tablename__ = "image_copies"

    host_id: str = Field(primary_key=True)
    name: str = Field(primary_key=True)
    version: str = Field(primary_key=True)
    verified_at: datetime = Field(default_factory=utcnow)


class AuditRecord(SQLModel, table=True):
    """One entry of the hash-chained audit trail (written only by infra.records.audit.append)."""

    __tablename__ = "audit_log"

    # Numbered by infra.records.audit under a lock, 1..n without gaps, so a gap means a deletion.
    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: datetime  # UTC, microseconds (what both databases keep) are hashed
    kind: str
    actor: str
    sandbox_id: str | None = Field(default=None, index=True)
    run_id: str | None = Field(default=None, index=True)
    summary: str = Field(sa_type=Text)
    detail: str = Field(default="{}", sa_type=Text)  # canonical JSON
    # Unique: two records naming the same predecessor would be a fork of the chain.
    prev_hash: str = Field(unique=True)
    hash: str = Field(unique=True)


def sqlite_pragmas(dbapi_conn, _record) -> None:
    """SQLAlchemy "connect" listener: every SQLite connection gets WAL and a busy timeout."""
    # WAL + a busy timeout: the CLI, flows and tests write concurrently.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


# Two threads opening a brand-new database at once would both run CREATE TABLE.
_engine_lock = threading.Lock()


def _engine_for(url: str) -> Engine:
    with _engine_lock:
        return _cached_engine(url)


@lru_cache(maxsize=8)
def _cached_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    schema.upgrade(engine)
    return engine


# (home, database URL) pairs whose modes this process has put right already.
_private: set[tuple[Path, str]] = set()


def _private_home(settings: FluidSettings) -> None:
    """FLUID_HOME, its runs folder and an SQLite database private, made so (an older install's
    looser modes are tightened the first time this process uses them)."""
    if (settings.home, settings.db_url) in _private:
        return
    private_dir(settings.home)
    private_dir(settings.runs_dir)
    url = settings.db_url
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        db = Path(url.removeprefix("sqlite:///"))
        if not db.parent.exists():
            private_dir(db.parent)
        # SQLite gives -wal and -shm the database file's mode: an empty 0600 file first.
        os.close(os.open(db, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
        for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            if f.exists() and f.stat().st_mode & 0o077:
                f.chmod(PRIVATE_FILE)
    _private.add((settings.home, settings.db_url))


def engine(settings: FluidSettings | None = None) -> Engine:
    """The engine for the configured database, its tables created on first use."""
    settings = settings or get_settings()
    _private_home(settings)
    return _engine_for(settings.db_url)


@contextmanager
def session(settings: FluidSettings | None = None) -> Iterator[Session]:
    """A database session that commits on success and rolls back on error."""
    with Session(engine(settings), expire_on_commit=False) as s:
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
