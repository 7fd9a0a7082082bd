"""The audit trail is a keyed hash chain: edits (also re-hashed by someone who has the database
but not the key), deletions and truncations are detected, the decisions and applies tables are
held to it, and concurrent writers (processes, hosts sharing a database and its key) extend
one chain without forking it.

No VM needed: records are appended with audit.append and through the hooks that need none
(runs.decide, runs.record_apply, the command recorder).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from infra.ansible.playbook_runs import PlaybookRun
from infra.machines import lifecycle
from infra.records import audit, runs, store
from infra.settings import FluidSettings
from infra.transport.command_output import CommandResult
from tests.conftest import fluid, fresh_postgres_database
from tests.repo import ROOT


def _fresh(tmp_path: Path) -> FluidSettings:
    return FluidSettings(home=tmp_path / "home")


def _fill(settings: FluidSettings, n: int = 5) -> list[store.AuditRecord]:
    return [
        audit.append(
            "command",
            actor="test",
            summary=f"step {i} -> exit 0",
            sandbox_id="sb-a",
            detail={"i": i},
            settings=settings,
        )
        for i in range(1, n + 1)
    ]


def _sql(settings: FluidSettings, statement: str, **params: object) -> None:
    with store.engine(settings).begin() as conn:
        conn.execute(text(statement), params)


def test_a_chain_of_appends_verifies(tmp_path):
    settings = _fresh(tmp_path)
    assert audit.verify(settings) == audit.AuditReport(ok=True, count=0, head=None, problems=[])
    recs = _fill(settings)
    assert [r.seq for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(recs, recs[1:], strict=False))
    report = audit.verify(settings)
    assert report.ok and report.count == 5 and report.problems == []
    assert report.head == recs[-1].hash == audit.head(settings)
    # The head witness outside the database, readable by its owner only.
    witness = audit.witness_path(settings)
    assert json.loads(witness.read_text())["seq"] == 5
    assert stat.S_IMODE(witness.stat().st_mode) == 0o600


def test_records_are_keyed_with_a_private_key_the_database_does_not_hold(tmp_path):
    settings = _fresh(tmp_path)
    recs = _fill(settings, 2)
    key = audit.key_path(settings)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    secret = json.loads(key.read_text())["key"]
    assert len(bytes.fromhex(secret)) == 32
    # What is stored is the key's HMAC, not a hash anyone can recompute.
    assert all(r.hash == audit.record_mac(r, bytes.fromhex(secret)) for r in recs)
    assert all(r.hash != audit.record_hash(r) for r in recs)
    db = Path(settings.db_url.removeprefix("sqlite:///"))
    stored = b"".join(f.read_bytes() for f in db.parent.glob(db.name + "*"))
    assert secret.encode() not in stored and bytes.fromhex(secret) not in stored


def test_an_edited_record_is_named(tmp_path):
    settings = _fresh(tmp_path)
    _fill(settings)
    _sql(settings, "UPDATE audit_log SET summary = 'nothing to see' WHERE seq = 3")
    report = audit.verify(settings)
    assert not report.ok
    assert report.problems == ["record 3 was changed: its content no longer matches its keyed hash"]
    assert report.advice and "compare the named records with a backup" in report.advice[0]


def _rewrite(settings: FluidSettings, seq: int, **fields: object) -> None:
    """What someone with the database but not the key can do: edit a record, re-hash it and
    every later one with plain SHA-256 so each links to the one before, and move the head
    witness (the same user owns it) to the new head."""
    with store.session(settings) as s:
        recs = list(s.exec(select(store.AuditRecord).order_by(store.AuditRecord.seq)))
        for k, v in fields.items():
            setattr(recs[seq - 1], k, v)
        # prev_hash and hash are unique: clear the old values before writing the new ones.
        for rec in recs[seq - 1 :]:
            rec.prev_hash, rec.hash = f"old-prev-{rec.seq}", f"old-{rec.seq}"
            s.add(rec)
        s.flush()
        prev = recs[seq - 2].hash if seq > 1 else audit.GENESIS
        for rec in recs[seq - 1 :]:
            rec.prev_hash = prev
            rec.hash = prev = audit.record_hash(rec)
            s.add(rec)
    head = {"seq": recs[-1].seq, "hash": recs[-1].hash, "store": settings.store_id}
    audit.witness_path(settings).write_text(json.dumps(head))


def test_a_record_rewritten_and_rehashed_without_the_key_is_named(tmp_path):
    settings = _fresh(tmp_path)
    _fill(settings)
    _rewrite(settings, 3, actor="someone-else")
    report = audit.verify(settings)
    assert not report.ok
    assert report.problems[0] == (
        "record 3 was rewritten: its hash is a plain SHA-256 of its content, not the audit "
        "key's HMAC (what someone with the database but not the key computes)"
    )
    # The links hold (they were recomputed), so each re-hashed record is named the same way.
    assert [p.split(":")[0] for p in report.problems] == [
        "record 3 was rewritten",
        "record 4 was rewritten",
        "record 5 was rewritten",
    ]


def test_a_deleted_record_is_detected(tmp_path):
    settings = _fresh(tmp_path)
    _fill(settings)
    _sql(settings, "DELETE FROM audit_log WHERE seq = 3")
    report = audit.verify(settings)
    assert not report.ok and report.count == 4
    assert report.problems == ["record 3 is missing (the chain jumps from 2 to 4)"]


def test_records_from_before_the_key_are_reported_as_unkeyed(tmp_path):
    """An older install's records carry plain SHA-256 hashes: verify names them, and the
    first keyed record anchors them."""
    settings = _fresh(tmp_path)
    prev = audit.GENESIS
    with store.session(settings) as s:
        for seq in (1, 2, 3):
            rec = store.AuditRecord(
                seq=seq,
                at=datetime.now(UTC),
                kind="command",
                actor="old",
                summary=f"old {seq}",
                prev_hash=prev,
                hash="",
            )
            rec.hash = prev = audit.record_hash(rec)
            s.add(rec)
            s.flush()
    before = audit.verify(settings)
    # (no witness yet: the older install did write one, this one was made by hand)
    assert before.unkeyed == [(1, 3)]
    assert before.notes == [
        f"records 1..3 predate the audit key ({audit.key_path(settings)}) and are not "
        "authenticated: they carry plain SHA-256 hashes; no keyed record follows them, so "
        "they could be rewritten unnoticed"
    ]
    _fill(settings, 2)
    assert json.loads(audit.key_path(settings).read_text())["first_seq"] == 4
    after = audit.verify(settings)
    assert after.ok and after.count == 5 and after.unkeyed == [(1, 3)]
    assert "the first keyed record, 4, holds the last one's hash" in after.notes[0]
    # An unkeyed record re-hashed (and its successor relinked) still breaks keyed record 4.
    _rewrite(settings, 2, summary="rewritten")
    assert audit.verify(settings).problems[0] == (
        "record 4 was rewritten: its hash is a plain SHA-256 of its content, not the audit "
        "key's HMAC (what someone with the database but not the key computes)"
    )


def test_a_home_without_the_key_cannot_extend_a_keyed_chain(tmp_path):
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    _fill(FluidSettings(home=tmp_path / "a", database_url=db), 1)
    other = FluidSettings(home=tmp_path / "b", database_url=db)
    with pytest.raises(audit.AuditError, match="copy the key file"):
        audit.append("command", actor="b", summary="x", settings=other)
    assert not audit.key_path(other).exists()


def test_removing_the_newest_records_is_detected_by_the_witness(tmp_path):
    settings = _fresh(tmp_path)
    recs = _fill(settings)
    _sql(settings, "DELETE FROM audit_log WHERE seq > 3")
    report = audit.verify(settings)
    # What is left is a valid chain in itself; only the witness knows it was longer.
    assert not report.ok and report.head == recs[2].hash
    assert len(report.problems) == 1
    assert report.problems[0].startswith("2 records are missing after seq 3")


def test_a_chain_without_its_witness_is_not_vouched_for(tmp_path):
    settings = _fresh(tmp_path)
    _fill(settings, 2)
    audit.witness_path(settings).unlink()
    problems = audit.verify(settings).problems
    assert len(problems) == 1 and "head witness" in problems[0] and "missing" in problems[0]


def test_the_database_refuses_a_fork(tmp_path):
    """Even with a lock bug, two records cannot follow the same record."""
    settings = _fresh(tmp_path)
    recs = _fill(settings, 2)
    with pytest.raises(IntegrityError):
        _sql(
            settings,
            "INSERT INTO audit_log (seq, at, kind, actor, summary, detail, prev_hash, hash) "
            "VALUES (3, :at, 'command', 'x', 'fork', '{}', :prev, :h)",
            at=datetime.now(UTC),
            prev=recs[0].hash,  # record 2 already follows record 1
            h="f" * 64,
        )


def test_expected_head_must_be_in_the_chain(tmp_path):
    settings = _fresh(tmp_path)
    recs = _fill(settings, 3)
    assert audit.verify(settings, expected_head=recs[1].hash).ok
    report = audit.verify(settings, expected_head="ab" * 32)
    assert report.problems == [f"head {'ab' * 32} is not in the chain"]


def test_unknown_kinds_are_refused(tmp_path):
    with pytest.raises(audit.AuditError, match="unknown audit record kind"):
        audit.append("coffee", actor="t", summary="x", settings=_fresh(tmp_path))


# --- the hooks ------------------------------------------------------------------------------


def test_decisions_and_applies_are_audited(tmp_path):
    settings = _fresh(tmp_path)
    runs.start("run-1", "install nginx", "web", settings)
    runs.decide("run-1", 1, "rejected", approver="alice", comment="use 8080", settings=settings)
    runs.decide("run-1", 2, "approved", approver="bob", digest="d" * 64, settings=settings)
    # A replayed decision (a resumed run re-runs its early steps) is not a new event.
    runs.decide("run-1", 2, "approved", approver="bob", digest="d" * 64, settings=settings)
    runs.decide("run-1", 3, "timed-out", settings=settings)
    played = PlaybookRun(
        status="successful",
        rc=0,
        ok={"web": 5},
        changed={"web": 2},
        failures={},
        unreachable={},
        duration_s=3.0,
    )
    runs.record_apply("run-1", played, "d" * 64, settings)

    recs = audit.entries("run-1", settings)
    assert [(r.kind, r.actor) for r in recs] == [
        ("approval", "alice"),
        ("approval", "bob"),
        ("approval", "fluid"),
        ("apply", "fluid"),
    ]
    assert all(r.run_id == "run-1" and r.sandbox_id is None for r in recs)
    assert recs[0].summary == "rejected attempt 1"
    assert json.loads(recs[0].detail)["comment"] == "use 8080"
    assert recs[1].summary == f"approved attempt 2, playbook sha256 {'d' * 64}"
    assert recs[3].summary == f"applied: playbook sha256 {'d' * 64} on web"
    assert json.loads(recs[3].detail)["hosts"]["web"] == {
        "ok": 5,
        "changed": 2,
        "failed": 0,
        "unreachable": 0,
    }
    assert audit.verify(settings).ok


def _decided_and_applied(settings: FluidSettings) -> None:
    runs.start("run-1", "install nginx", "web", settings)
    runs.decide("run-1", 1, "rejected", approver="alice", comment="use 8080", settings=settings)
    runs.decide("run-1", 2, "approved", approver="bob", digest="d" * 64, settings=settings)
    # A refusal after the approval keeps the approver and adds to the comment.
    runs.decide("run-1", 2, "refused", digest="d" * 64, comment="changed", settings=settings)
    played = PlaybookRun(
        status="successful",
        rc=0,
        ok={"web": 5, "db": 3},
        changed={"web": 2},
        failures={},
        unreachable={},
        duration_s=3.0,
    )
    runs.record_apply("run-1", played, "d" * 64, settings)
    assert audit.verify(settings).ok, audit.verify(settings).problems


def test_an_edited_decision_is_reported_field_by_field(tmp_path):
    settings = _fresh(tmp_path)
    _decided_and_applied(settings)
    _sql(settings, "UPDATE decisions SET approver = 'mallory' WHERE attempt = 1")
    _sql(settings, "UPDATE decisions SET outcome = 'approved', comment = '' WHERE attempt = 2")
    report = audit.verify(settings)
    assert report.problems == [
        "decisions row 1 (run run-1, attempt 1) differs from audit record 1: approver is "
        "'mallory' in the table but 'alice' in the record",
        "decisions row 2 (run run-1, attempt 2) differs from audit record 3: outcome is "
        "'approved' in the table but 'refused' in the record, comment is '' in the table but "
        "'changed' in the record",
    ]
    assert any("the decisions or applies tables were changed" in a for a in report.advice)


def test_a_record_whose_detail_is_not_json_is_named_not_a_crash(tmp_path):
    settings = _fresh(tmp_path)
    _decided_and_applied(settings)
    _sql(settings, "UPDATE audit_log SET detail = 'not json' WHERE seq = 1")
    _sql(settings, "UPDATE audit_log SET detail = '[1]' WHERE seq = 4")
    problems = audit.verify(settings).problems
    assert problems[:2] == [
        "record 1 was changed: its content no longer matches its keyed hash",
        "record 4 was changed: its content no longer matches its keyed hash",
    ]
    assert "decisions row 1 (run run-1, attempt 1) has no approval record" in problems[2]


def test_decisions_and_applies_added_deleted_or_changed_outside_the_chain_are_reported(
    tmp_path,
):
    settings = _fresh(tmp_path)
    _decided_and_applied(settings)
    _sql(settings, "DELETE FROM decisions WHERE attempt = 1")
    _sql(
        settings,
        "INSERT INTO decisions (flow_run_id, attempt, outcome, approver, automatic, comment, "
        "decided_at) VALUES ('run-1', 3, 'approved', 'mallory', 0, '', :at)",
        at=datetime.now(UTC),
    )
    _sql(settings, "UPDATE applies SET failed = 0, changed = 9 WHERE host = 'web'")
    _sql(settings, "DELETE FROM applies WHERE host = 'db'")
    assert audit.verify(settings).problems == [
        "decisions row 3 (run run-1, attempt 3) has no approval record in the audit trail",
        "audit record 1 (approval of run run-1, attempt 1) has no decisions row: the row was "
        "deleted",
        "applies row 2 (run run-1, host web) differs from audit record 4: changed is 9 in the "
        "table but 2 in the record",
        "audit record 4 (apply of run run-1 on db) has no applies row: the row was deleted",
    ]


def _result(command: str, status: int, **kw: object) -> CommandResult:
    now = datetime.now(UTC)
    fields = dict(stdout=b"out\n", stderr=b"", stdout_cut=0, stderr_cut=0, duration_s=0.25)
    fields.update(kw)
    return CommandResult(
        command=command, exit_status=status, started_at=now, ended_at=now, **fields
    )


def test_recorded_commands_are_audited(tmp_path):
    settings = _fresh(tmp_path)
    long = "echo " + "x" * 300
    lifecycle.record_command("sb-c", _result(long, 0), "agent", settings)
    lifecycle.record_command("sb-c", _result("sleep 99", -1, timed_out=True), None, settings)
    lifecycle.record_command("prod-web", _result("nginx -t", 1), "fluid", settings, "web")

    cmds = audit.entries("sb-c", settings)
    assert [r.actor for r in cmds] == ["agent", audit.default_actor()]
    assert cmds[0].summary == long[:199] + "… -> exit 0"
    assert json.loads(cmds[0].detail) == {
        "exit_status": 0,
        "timed_out": False,
        "duration_s": 0.25,
        "stdout_bytes": 4,
        "stderr_bytes": 0,
    }
    assert cmds[1].summary == "sleep 99 -> timed out"
    prod = audit.entries(None, settings)[-1]
    assert prod.sandbox_id is None and json.loads(prod.detail)["production"] == "web"
    assert prod.summary == "nginx -t -> exit 1"


def test_a_runs_trail_includes_its_sandboxes(tmp_path):
    settings = _fresh(tmp_path)
    runs.start("run-2", "task", "web", settings)
    runs.update("run-2", settings, sandbox_id="sb-2")
    audit.append(
        "command", actor="a", summary="in the run's sandbox", sandbox_id="sb-2", settings=settings
    )
    audit.append(
        "command", actor="a", summary="elsewhere", sandbox_id="sb-other", settings=settings
    )
    # An earlier attempt's sandbox, known only from a record of the run.
    audit.append(
        "tool-call",
        actor="agent",
        summary="earlier attempt",
        sandbox_id="sb-1",
        run_id="run-2",
        settings=settings,
    )
    audit.append(
        "command",
        actor="a",
        summary="earlier attempt's command",
        sandbox_id="sb-1",
        settings=settings,
    )
    got = [r.summary for r in audit.entries("run-2", settings)]
    assert got == ["in the run's sandbox", "earlier attempt", "earlier attempt's command"]


# --- concurrency ---------------------------------------------------------------------------

_WRITER = """
import sys
from infra.records import audit
for i in range(int(sys.argv[2])):
    audit.append("command", actor=sys.argv[1], summary=f"{sys.argv[1]} {i}", sandbox_id="race")
"""


def _race(homes: list[Path], db_url: str, writers: int = 4, each: int = 25) -> None:
    # Tables first: creating them is not what races here (and create_all itself is not
    # safe against a concurrent create_all).
    store.engine(FluidSettings(home=homes[0], database_url=db_url))
    # Homes that share a database share its audit key.
    key = audit.ensure_key(FluidSettings(home=homes[0], database_url=db_url))
    for home in homes[1:]:
        (home / "audit").mkdir(parents=True, mode=0o700)
        shutil.copy2(key, home / "audit" / "key")
    procs = []
    for w in range(writers):
        env = dict(os.environ, FLUID_HOME=str(homes[w % len(homes)]), FLUID_DATABASE_URL=db_url)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WRITER, f"w{w}", str(each)],
                env=env,
                cwd=ROOT,
                stderr=subprocess.PIPE,
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()


def _assert_one_chain(settings: FluidSettings, n: int) -> None:
    report = audit.verify(settings)
    assert report.ok, report.problems
    recs = audit.entries("race", settings)
    assert [r.seq for r in recs] == list(range(1, n + 1))
    for w in range(4):
        mine = [r.summary for r in recs if r.actor == f"w{w}"]
        assert mine == [f"w{w} {i}" for i in range(n // 4)]  # each writer's order kept


def test_concurrent_processes_extend_one_chain(tmp_path):
    """Two FLUID_HOMEs on one SQLite file: the homes' file locks do not cover each other, so
    only the database's write lock stands between the writers."""
    homes = [tmp_path / "a", tmp_path / "b"]
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    _race(homes, db)
    for home in homes:
        _assert_one_chain(FluidSettings(home=home, database_url=db), 100)


@pytest.fixture(scope="module")
def postgres_url() -> str:
    """A real PostgreSQL on loopback: FLUID_TEST_POSTGRES_URL, or the local cluster."""
    return fresh_postgres_database("fluid_audit_test")


def test_concurrent_processes_extend_one_chain_on_postgresql(tmp_path, postgres_url):
    homes = [tmp_path / "a", tmp_path / "b"]
    _race(homes, postgres_url)
    for home in homes:
        _assert_one_chain(FluidSettings(home=home, database_url=postgres_url), 100)
    # Tampering is caught the same way there.
    settings = FluidSettings(home=homes[0], database_url=postgres_url)
    _sql(settings, "UPDATE audit_log SET summary = 'x' WHERE seq = 50")
    assert audit.verify(settings).problems == [
        "record 50 was changed: its content no longer matches its keyed hash"
    ]


# --- the command line ----------------------------------------------------------------------


@pytest.fixture
def cli_home(tmp_path, monkeypatch) -> FluidSettings:
    """A FLUID_HOME of its own for the `fluid` processes this test starts."""
    monkeypatch.setenv("FLUID_HOME", str(tmp_path / "cli-home"))
    return FluidSettings(home=tmp_path / "cli-home")


def test_fluid_audit_prints_a_subjects_records(cli_home):
    settings = cli_home
    runs.start("run-3", "task", "web", settings)
    runs.update("run-3", settings, sandbox_id="sb-3")
    audit.append(
        "command",
        actor="agent",
        summary="apt-get install -y nginx -> exit 0",
        sandbox_id="sb-3",
        settings=settings,
    )
    audit.append(
        "checkpoint",
        actor="fluid:checkpoint",
        summary="checkpoint after",
        sandbox_id="sb-3",
        settings=settings,
    )
    runs.decide("run-3", 1, "approved", approver="carol", digest="e" * 64, settings=settings)

    lines = fluid("audit", "run-3").stdout.decode().splitlines()
    assert len(lines) == 3
    seq, day, time, kind, actor, *summary = lines[0].split()
    assert (seq, kind, actor, " ".join(summary)) == (
        "1",
        "command",
        "agent",
        "apt-get install -y nginx -> exit 0",
    )
    assert time.endswith("Z") and len(day) == 10
    assert lines[2].split()[3:5] == ["approval", "carol"]
    # Aligned: every summary starts in the same column.
    starts = {
        line.index(s)
        for line, s in zip(lines, ["apt-get", "checkpoint after", "approved"], strict=True)
    }
    assert len(starts) == 1

    only_box = json.loads(fluid("audit", "sb-3", "--json").stdout)["records"]
    assert [r["seq"] for r in only_box] == [1, 2]

    r = fluid("audit", "no-such-thing", check=False)
    assert r.returncode == 1 and b"nothing is known about 'no-such-thing'" in r.stderr
    assert r.stdout == b""


def test_fluid_audit_verify_exit_codes(cli_home):
    settings = cli_home
    recs = _fill(settings, 4)
    ok = fluid("audit", "verify")
    assert ok.stdout.decode() == f"OK: 4 records, head {recs[-1].hash}\n"
    assert fluid("audit", "verify", "--head", recs[1].hash).returncode == 0
    report = json.loads(fluid("audit", "verify", "--json").stdout)
    assert report == {
        "ok": True,
        "count": 4,
        "head": recs[-1].hash,
        "problems": [],
        "unkeyed": [],
        "notes": [],
        "advice": [],
    }

    bad = fluid("audit", "verify", "--head", "0" * 63 + "1", check=False)
    assert bad.returncode == 1
    lines = bad.stdout.decode().splitlines()
    assert lines[0] == f"TAMPERED: head {'0' * 63 + '1'} is not in the chain"
    assert lines[1].startswith("WHAT TO DO: ") and len(lines) == 2

    _rewrite(settings, 2, summary="step 2 -> exit 0 (nothing to see)")
    bad = fluid("audit", "verify", check=False)
    assert bad.returncode == 1
    lines = bad.stdout.decode().splitlines()
    assert lines[0] == (
        "TAMPERED: record 2 was rewritten: its hash is a plain SHA-256 of its content, not the "
        "audit key's HMAC (what someone with the database but not the key computes)"
    )
    assert lines[-1].startswith("WHAT TO DO: records were changed outside fluid")

    _sql(settings, "DELETE FROM audit_log WHERE seq = 3")
    bad = fluid("audit", "verify", check=False)
    assert bad.returncode == 1
    assert "TAMPERED: record 3 is missing (the chain jumps from 2 to 4)" in bad.stdout.decode()


def test_fluid_audit_does_not_import_prefect(cli_home):
    probe = (
        "import sys, cli.main; cli.main.main(['audit', 'verify']); print('prefect' in sys.modules)"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        cwd=ROOT,
        check=True,
    )
    assert r.stdout.decode().splitlines()[-1] == "False"
