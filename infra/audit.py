"""The tamper-evident audit trail: every command, tool call, checkpoint, approval and apply.

Records form a hash chain: each carries the SHA-256 of the one before, and its own hash covers
its content and that link, so editing or deleting a record breaks the chain. Appends are
serialised (a file lock on this host, then the database's write lock: SQLite's BEGIN
IMMEDIATE, PostgreSQL's advisory lock) so concurrent runs cannot fork it, and the newest
record's seq and hash are also kept outside the database (FLUID_HOME/audit/head), so removing
the newest records, which leaves a shorter chain that is valid in itself, is detected too.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine, or_, select

from infra import store
from infra.errors import FluidError
from infra.settings import FluidSettings, get_settings
from infra.store import AgentRunRecord, AuditRecord

if TYPE_CHECKING:
    from infra.ssh import CommandResult

GENESIS = "0" * 64
KINDS = ("tool-call", "tool-blocked", "command", "checkpoint", "restore", "approval", "apply")
# pg_advisory_xact_lock key: b"fluidaud" as a signed 64-bit integer.
_PG_LOCK_KEY = int.from_bytes(b"fluidaud", "big", signed=True)


class AuditError(FluidError):
    """The audit trail cannot be written or read as asked."""


class AuditReport(BaseModel):
    """The result of checking the chain: ok when there are no problems."""

    ok: bool
    count: int
    head: str | None
    problems: list[str]


def default_actor(actor: str | None = None) -> str:
    """`actor`, else FLUID_ACTOR, else "user:<login name>"."""
    if actor:
        return actor
    if os.environ.get("FLUID_ACTOR"):
        return os.environ["FLUID_ACTOR"]
    try:
        login = os.getlogin()
    except OSError:
        import pwd

        login = pwd.getpwuid(os.getuid()).pw_name
    return f"user:{login}"


def canonical_json(obj: Any) -> str:
    """One byte-exact JSON text for a value: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _iso(at: datetime) -> str:
    # UTC to the microsecond, the precision both databases keep (naive values are UTC).
    at = at.astimezone(UTC) if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return at.isoformat(timespec="microseconds")


def record_hash(rec: AuditRecord) -> str:
    """The SHA-256 a record must carry: its content and its link to the one before."""
    content = {
        "seq": rec.seq,
        "at": _iso(rec.at),
        "kind": rec.kind,
        "actor": rec.actor,
        "sandbox_id": rec.sandbox_id,
        "run_id": rec.run_id,
        "summary": rec.summary,
        "detail": rec.detail,
        "prev_hash": rec.prev_hash,
    }
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def witness_path(settings: FluidSettings) -> Path:
    """The file that holds the newest record's seq and hash, outside the database."""
    return settings.home / "audit" / "head"


@contextmanager
def _host_lock(settings: FluidSettings) -> Iterator[None]:
    # Spans the commit and the witness write, so the witness never goes backwards.
    d = settings.home / "audit"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@lru_cache(maxsize=8)
def _sqlite_writer(url: str) -> Engine:
    """An engine whose every transaction starts with BEGIN IMMEDIATE (the write lock)."""
    eng = create_engine(url, connect_args={"check_same_thread": False, "isolation_level": None})
    event.listen(eng, "connect", store._sqlite_pragmas)
    event.listen(eng, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return eng


@contextmanager
def _locked_session(settings: FluidSettings) -> Iterator[Session]:
    """A session that holds the database's audit write lock from its first statement."""
    eng = store.engine(settings)  # creates the tables on first use
    if eng.dialect.name == "sqlite":
        eng = _sqlite_writer(settings.db_url)
    with Session(eng, expire_on_commit=False) as s:
        try:
            if eng.dialect.name == "postgresql":
                s.connection().execute(
                    text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY}
                )
            else:
                s.connection()  # BEGIN IMMEDIATE now, before the head is read
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise


def _write_witness(settings: FluidSettings, rec: AuditRecord) -> None:
    path = witness_path(settings)
    tmp = path.with_name(f".head.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"seq": rec.seq, "hash": rec.hash, "store": settings.store_id}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_witness(settings: FluidSettings) -> dict | None:
    try:
        return json.loads(witness_path(settings).read_text())
    except FileNotFoundError:
        return None


def append(
    kind: str,
    *,
    actor: str,
    summary: str,
    sandbox_id: str | None = None,
    run_id: str | None = None,
    detail: dict | None = None,
    settings: FluidSettings | None = None,
) -> AuditRecord:
    """Append one record to the chain (under the lock) and move the head witness to it.

    Call it outside any open write transaction on the same SQLite database, which would hold
    the write lock this waits for.
    """
    if kind not in KINDS:
        raise AuditError(f"unknown audit record kind {kind!r}; one of: {', '.join(KINDS)}")
    settings = settings or get_settings()
    with _host_lock(settings):
        with _locked_session(settings) as s:
            last = s.exec(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)).first()
            rec = AuditRecord(
                seq=last.seq + 1 if last else 1,
                at=datetime.now(UTC),
                kind=kind,
                actor=actor,
                sandbox_id=sandbox_id,
                run_id=run_id,
                summary=summary.replace("\x00", "\\x00"),  # PostgreSQL text refuses NUL
                detail=canonical_json(detail or {}),
                prev_hash=last.hash if last else GENESIS,
                hash="",
            )
            rec.hash = record_hash(rec)
            s.add(rec)
        _write_witness(settings, rec)
    return rec


def record_command(
    result: CommandResult,
    *,
    actor: str,
    sandbox_id: str | None,
    production: str | None = None,
    settings: FluidSettings | None = None,
) -> AuditRecord:
    """Append a "command" record for a guest command; a production VM's goes by its name."""
    cmd = " ".join(result.command.split("\n"))
    cmd = cmd if len(cmd) <= 200 else cmd[:199] + "…"
    ended = "timed out" if result.timed_out else f"exit {result.exit_status}"
    detail: dict[str, Any] = {
        "exit_status": result.exit_status,
        "timed_out": result.timed_out,
        "duration_s": round(result.duration_s, 3),
        "stdout_bytes": len(result.stdout) + result.stdout_cut,
        "stderr_bytes": len(result.stderr) + result.stderr_cut,
    }
    if production:
        detail["production"] = production
    return append(
        "command",
        actor=actor,
        summary=f"{cmd} -> {ended}",
        sandbox_id=None if production else sandbox_id,
        detail=detail,
        settings=settings,
    )


def head(settings: FluidSettings | None = None) -> str | None:
    """The hash of the newest record (None while the trail is empty)."""
    with store.session(settings or get_settings()) as s:
        last = s.exec(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)).first()
        return last.hash if last else None


def entries(subject: str | None = None, settings: FluidSettings | None = None) -> list[AuditRecord]:
    """Records of a sandbox or a run (all records for None), oldest first.

    A run's records include those of its sandboxes: the one its agent_runs row names and any
    named by a record of the run.
    """
    with store.session(settings or get_settings()) as s:
        if subject is None:
            return list(s.exec(select(AuditRecord).order_by(AuditRecord.seq)))
        boxes = {subject}
        run = s.get(AgentRunRecord, subject)
        if run is not None and run.sandbox_id:
            boxes.add(run.sandbox_id)
        boxes |= {
            b
            for b in s.exec(
                select(AuditRecord.sandbox_id).where(AuditRecord.run_id == subject).distinct()
            )
            if b
        }
        return list(
            s.exec(
                select(AuditRecord)
                .where(or_(AuditRecord.run_id == subject, AuditRecord.sandbox_id.in_(boxes)))
                .order_by(AuditRecord.seq)
            )
        )


def _missing(first: int, last: int) -> str:
    if first == last:
        return f"record {first} is missing"
    return f"records {first}..{last} are missing"


def verify(settings: FluidSettings | None = None, expected_head: str | None = None) -> AuditReport:
    """Check every hash and link, that seq runs 1..n without gaps, and the head witness.

    `expected_head`: a head hash published earlier (with a run's artifacts) must be in the chain.
    """
    settings = settings or get_settings()
    problems: list[str] = []
    count, prev_hash, expect = 0, GENESIS, 1
    hashes: dict[int, str] = {}
    seen: set[str] = set()
    with store.session(settings) as s:
        for rec in s.exec(select(AuditRecord).order_by(AuditRecord.seq)):
            count += 1
            if rec.seq != expect:
                problems.append(
                    f"{_missing(expect, rec.seq - 1)} (the chain jumps from "
                    f"{expect - 1} to {rec.seq})"
                )
            elif rec.prev_hash != prev_hash:
                before = f"record {rec.seq - 1}" if rec.seq > 1 else "the start of the chain"
                problems.append(
                    f"record {rec.seq} does not link to {before}: {before} was changed or replaced"
                )
            if record_hash(rec) != rec.hash:
                problems.append(
                    f"record {rec.seq} was changed: its content no longer matches its hash"
                )
            hashes[rec.seq] = rec.hash
            seen.add(rec.hash)
            prev_hash, expect = rec.hash, rec.seq + 1
    last_seq = expect - 1
    witness = _read_witness(settings)
    where = witness_path(settings)
    if witness is None:
        if count:
            problems.append(
                f"the head witness {where} is missing, so removal of the newest records "
                "cannot be ruled out"
            )
    elif witness.get("store") != settings.store_id:
        problems.append(f"the head witness {where} belongs to another database")
    elif witness["seq"] > last_seq:
        n = witness["seq"] - last_seq
        problems.append(
            f"{n} record{'s are' if n > 1 else ' is'} missing after seq {last_seq}: "
            f"the chain ends at {last_seq} but reached {witness['seq']} "
            f"(head witness {where})"
        )
    elif witness["seq"] in hashes and hashes[witness["seq"]] != witness["hash"]:
        problems.append(
            f"record {witness['seq']} is not the one witnessed as head in {where}: "
            "it was changed or replaced"
        )
    if expected_head is not None and expected_head not in seen:
        problems.append(f"head {expected_head} is not in the chain")
    return AuditReport(ok=not problems, count=count, head=hashes.get(last_seq), problems=problems)
