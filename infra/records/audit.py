"""The tamper-evident audit trail: every command, tool call, checkpoint, approval and apply.

Records form a chain: each carries the hash of the one before, and its own hash covers its
content and that link, so editing or deleting a record breaks the chain. The hash is an
HMAC-SHA256 under a key the database does not hold (FLUID_HOME/audit/key, 0600, made by the
first append), so whoever can write the database but not read the key cannot forge a record
or re-hash an edited one. Hosts (or homes) that share one database share that file.

Appends are serialised (a file lock on this host, then the database's write lock: SQLite's
BEGIN IMMEDIATE, PostgreSQL's advisory lock) so concurrent runs cannot fork the chain, and the
newest record's seq and hash are also kept outside the database (FLUID_HOME/audit/head), so
removing the newest records, which leaves a shorter chain that is valid in itself, is detected
too. Records written before the key existed (an older install) keep their plain SHA-256
hashes; `verify` names them as unkeyed. The decisions and applies tables are held to the
approval and apply records of the chain, field for field.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine, or_, select

from infra.errors import FluidError
from infra.host.permissions import PRIVATE_FILE, private_dir, write_private
from infra.records import store
from infra.records.audit_tables import check_applies, check_decisions
from infra.records.store import AgentRunRecord, AuditRecord
from infra.settings import FluidSettings, get_settings

if TYPE_CHECKING:
    from infra.transport.command_output import CommandResult

GENESIS = "0" * 64
KINDS = ("tool-call", "tool-blocked", "command", "checkpoint", "restore", "approval", "apply")
# pg_advisory_xact_lock key: b"fluidaud" as a signed 64-bit integer.
_PG_LOCK_KEY = int.from_bytes(b"fluidaud", "big", signed=True)


class AuditError(FluidError):
    """The audit trail cannot be written or read as asked."""


class AuditReport(BaseModel):
    """The result of checking the chain: ok when there are no problems.

    `unkeyed`: ranges of seqs written before the audit key existed (plain SHA-256 hashes);
    `notes` says what that means for them, `advice` what to do about the problems.
    """

    ok: bool
    count: int
    head: str | None
    problems: list[str]
    unkeyed: list[tuple[int, int]] = []
    notes: list[str] = []
    advice: list[str] = []


class _Key(NamedTuple):
    secret: bytes
    first_seq: int  # records before it predate the key


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


def _content(rec: AuditRecord) -> bytes:
    return canonical_json(
        {
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
    ).encode()


def record_hash(rec: AuditRecord) -> str:
    """The plain SHA-256 of a record's content and link: what records written before the
    audit key existed carry (and all that someone without the key can compute)."""
    return hashlib.sha256(_content(rec)).hexdigest()


def record_mac(rec: AuditRecord, secret: bytes) -> str:
    """The HMAC-SHA256 under the audit key that a keyed record carries."""
    return hmac.new(secret, _content(rec), hashlib.sha256).hexdigest()


def witness_path(settings: FluidSettings) -> Path:
    """The file that holds the newest record's seq and hash, outside the database."""
    return settings.home / "audit" / "head"


def key_path(settings: FluidSettings) -> Path:
    """The audit key: HMAC secret and the first seq it covers (0600, never in the database)."""
    return settings.home / "audit" / "key"


def _load_key(settings: FluidSettings) -> _Key | None:
    path = key_path(settings)
    try:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(PRIVATE_FILE)
        data = json.loads(path.read_text())
        secret, first_seq = bytes.fromhex(data["key"]), int(data["first_seq"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AuditError(
            f"the audit key {path} cannot be read ({e}); restore it from a backup: without it "
            "no keyed record can be checked"
        ) from e
    if len(secret) != 32 or first_seq < 1:
        raise AuditError(f"the audit key {path} is malformed; restore it from a backup")
    return _Key(secret, first_seq)


def _make_key(settings: FluidSettings, last: AuditRecord | None) -> _Key:
    """A new key covering records from the next seq on (under both locks)."""
    if last is not None and record_hash(last) != last.hash:
        # Its hash is an HMAC: someone keeps this chain with a key this home lacks.
        raise AuditError(
            f"the audit trail in this database is kept with an audit key that "
            f"{key_path(settings)} does not hold: copy the key file (mode 0600) from the "
            "FLUID_HOME that writes this database, then try again"
        )
    key = _Key(secrets.token_bytes(32), last.seq + 1 if last else 1)
    text = json.dumps({"key": key.secret.hex(), "first_seq": key.first_seq})
    write_private(key_path(settings), text.encode())
    return key


def ensure_key(settings: FluidSettings | None = None) -> Path:
    """Make the audit key now if there is none (the first append does it too); its path.

    Homes that share one database need the same key: make it in one, copy the file to the
    others' FLUID_HOME/audit/ (0600) before they write.
    """
    settings = settings or get_settings()
    with _host_lock(settings):
        if _load_key(settings) is None:
            with _locked_session(settings) as s:
                _make_key(settings, _newest(s))
    return key_path(settings)


def _newest(s: Session) -> AuditRecord | None:
    return s.exec(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)).first()


@contextmanager
def _host_lock(settings: FluidSettings) -> Iterator[None]:
    # Spans the commit and the witness write, so the witness never goes backwards.
    d = private_dir(settings.home / "audit")
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
    event.listen(eng, "connect", store.sqlite_pragmas)
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
        witness = json.loads(witness_path(settings).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # reported as unreadable
    return witness if isinstance(witness, dict) else {}


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
            last = _newest(s)
            key = _load_key(settings) or _make_key(settings, last)
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
            rec.hash = record_mac(rec, key.secret)
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


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for n in seqs:
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def _span(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first}..{last}"


def _content_problem(rec: AuditRecord, key: _Key | None) -> str | None:
    """Why a record's hash does not vouch for its content (None when it does)."""
    if key is None or rec.seq < key.first_seq:
        if record_hash(rec) == rec.hash:
            return None
        return f"record {rec.seq} was changed: its content no longer matches its hash"
    if hmac.compare_digest(record_mac(rec, key.secret), rec.hash):
        return None
    if record_hash(rec) == rec.hash:
        return (
            f"record {rec.seq} was rewritten: its hash is a plain SHA-256 of its content, not "
            "the audit key's HMAC (what someone with the database but not the key computes)"
        )
    return f"record {rec.seq} was changed: its content no longer matches its keyed hash"


def verify(settings: FluidSettings | None = None, expected_head: str | None = None) -> AuditReport:
    """Check every record's keyed hash and link, that seq runs 1..n without gaps, the head
    witness, and the decisions and applies tables against the chain.

    `expected_head`: a head hash published earlier (with a run's artifacts) must be in the chain.
    """
    settings = settings or get_settings()
    key = _load_key(settings)
    problems: list[str] = []
    count, prev_hash, expect = 0, GENESIS, 1
    hashes: dict[int, str] = {}
    seen: set[str] = set()
    unkeyed: list[int] = []
    first_keyed: int | None = None
    approvals: list[AuditRecord] = []
    applies: list[AuditRecord] = []
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
            if problem := _content_problem(rec, key):
                problems.append(problem)
            if key is None or rec.seq < key.first_seq:
                unkeyed.append(rec.seq)
            elif first_keyed is None:
                first_keyed = rec.seq
            if rec.kind == "approval":
                approvals.append(rec)
            elif rec.kind == "apply":
                applies.append(rec)
            hashes[rec.seq] = rec.hash
            seen.add(rec.hash)
            prev_hash, expect = rec.hash, rec.seq + 1
        chain_problems = len(problems)
        problems += check_decisions(s, approvals) + check_applies(s, applies)
        row_problems = len(problems) - chain_problems
    last_seq = expect - 1
    witness = _read_witness(settings)
    where = witness_path(settings)
    if witness is None:
        if count:
            problems.append(
                f"the head witness {where} is missing, so removal of the newest records "
                "cannot be ruled out"
            )
    elif not isinstance(witness.get("seq"), int) or not isinstance(witness.get("hash"), str):
        problems.append(f"the head witness {where} is unreadable")
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
    ranges = _ranges(unkeyed)
    notes = []
    if ranges:
        spans = ", ".join(_span(a, b) for a, b in ranges)
        anchor = (
            f"the first keyed record, {first_keyed}, holds the last one's hash, so an edit to "
            "them still shows"
            if first_keyed is not None
            else "no keyed record follows them, so they could be rewritten unnoticed"
        )
        notes.append(
            f"{spans} predate the audit key ({key_path(settings)}) and are not authenticated: "
            f"they carry plain SHA-256 hashes; {anchor}"
        )
    advice = []
    if len(problems) > row_problems:
        advice.append(
            "records were changed outside fluid: keep copies of the database and of "
            f"{where.parent} as they are now, compare the named records with a backup, and "
            "find out who can write the database"
        )
        if key is None and count:
            advice.append(
                f"there is no audit key at {key_path(settings)}: if these records were "
                "written with one, restore that file from a backup and verify again"
            )
    if row_problems:
        advice.append(
            "the decisions or applies tables were changed outside fluid: the audit trail "
            "holds what was decided and applied (`fluid audit RUN` prints it)"
        )
    return AuditReport(
        ok=not problems,
        count=count,
        head=hashes.get(last_seq),
        problems=problems,
        unkeyed=ranges,
        notes=notes,
        advice=advice,
    )
