"""The store's account of agent-task runs: status, every decision, per-host apply results,
and the read-only copy of each proposed playbook that an approval is bound to.

Written by the flow as it goes (idempotently: a resumed run replays its early steps) and by
the janitor for runs that ended without running code (an approval that timed out while the
run was suspended).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlmodel import select

from infra.ansible.playbook_runs import PlaybookRun
from infra.errors import FluidError
from infra.host.identity import host_id
from infra.host.permissions import private_dir
from infra.records import audit, store
from infra.records.store import (
    FINAL_RUN_STATUSES,
    AgentRunRecord,
    ApplyRecord,
    DecisionRecord,
    utcnow,
)
from infra.settings import FluidSettings, get_settings

# The sealed copy of a proposed playbook: readable by its owner, writable by nobody.
SEALED_FILE, SEALED_DIR = 0o400, 0o500


class PlaybookChanged(FluidError):
    """The playbook about to be applied is not the one that was shown and approved."""


def start(
    flow_run_id: str, task: str, production: str, settings: FluidSettings | None = None
) -> AgentRunRecord:
    """The run's record, made on first call (a resumed run finds it as it was)."""
    with store.session(settings or get_settings()) as s:
        rec = s.get(AgentRunRecord, flow_run_id)
        if rec is None:
            rec = AgentRunRecord(
                flow_run_id=flow_run_id,
                task=task,
                production=production,
                host_id=host_id(settings),
            )
            s.add(rec)
        return rec


def update(flow_run_id: str, settings: FluidSettings | None = None, **fields: object) -> None:
    """Set fields of a run's record (a run that already ended keeps its final status)."""
    with store.session(settings or get_settings()) as s:
        rec = s.get(AgentRunRecord, flow_run_id)
        if rec is None:
            return
        if rec.status in FINAL_RUN_STATUSES and "status" in fields:
            fields.pop("status")
        for k, v in fields.items():
            setattr(rec, k, v)
        rec.updated_at = utcnow()
        s.add(rec)


def finish(
    flow_run_id: str, status: str, message: str = "", settings: FluidSettings | None = None
) -> None:
    """Record how the run ended; the first final status stays."""
    with store.session(settings or get_settings()) as s:
        rec = s.get(AgentRunRecord, flow_run_id)
        if rec is None or rec.status in FINAL_RUN_STATUSES:
            return
        rec.status, rec.message, rec.updated_at = status, message[:2000], utcnow()
        s.add(rec)


def decide(
    flow_run_id: str,
    attempt: int,
    outcome: str,
    *,
    approver: str | None = None,
    automatic: bool = False,
    comment: str = "",
    digest: str | None = None,
    settings: FluidSettings | None = None,
) -> DecisionRecord:
    """Store the decision on one attempt; a replayed call finds the stored one.

    A later "refused" (the playbook changed after approval) overrides the approval it refers to.
    """
    with store.session(settings or get_settings()) as s:
        rec = s.exec(
            select(DecisionRecord).where(
                DecisionRecord.flow_run_id == flow_run_id, DecisionRecord.attempt == attempt
            )
        ).first()
        if rec is not None and outcome != "refused":
            return rec
        if rec is None:
            rec = DecisionRecord(flow_run_id=flow_run_id, attempt=attempt, outcome=outcome)
        rec.outcome = outcome
        rec.approver = approver if approver is not None else rec.approver
        rec.automatic = automatic or rec.automatic
        rec.comment = comment if outcome != "refused" else f"{rec.comment}\n{comment}".strip()
        rec.digest = digest
        rec.decided_at = utcnow()
        s.add(rec)
    audit.append(
        "approval",
        actor=approver or "fluid",
        summary=f"{outcome} attempt {attempt}{' (automatic)' if automatic else ''}"
        + (f", playbook sha256 {digest}" if digest else ""),
        run_id=flow_run_id,
        # The row as stored (a refusal keeps the approver and extends the comment), which
        # `fluid audit verify` holds the decisions table to, field for field.
        detail={
            "attempt": attempt,
            "outcome": rec.outcome,
            "approver": rec.approver,
            "automatic": rec.automatic,
            "comment": rec.comment,
            "digest": rec.digest,
        },
        settings=settings,
    )
    return rec


def record_apply(
    flow_run_id: str, run: PlaybookRun, digest: str, settings: FluidSettings | None = None
) -> list[ApplyRecord]:
    """One row per production host with its task counts."""
    hosts = set(run.ok) | set(run.changed) | set(run.failures) | set(run.unreachable)
    rows = [
        ApplyRecord(
            flow_run_id=flow_run_id,
            host=h,
            ok=run.ok.get(h, 0),
            changed=run.changed.get(h, 0),
            failed=run.failures.get(h, 0),
            unreachable=run.unreachable.get(h, 0),
            digest=digest,
        )
        for h in sorted(hosts)
    ]
    with store.session(settings or get_settings()) as s:
        s.add_all(rows)
    audit.append(
        "apply",
        actor="fluid",
        summary=f"{'applied' if run.succeeded else 'apply failed'}: playbook sha256 {digest} "
        f"on {', '.join(r.host for r in rows) or 'no host'}",
        run_id=flow_run_id,
        detail={
            "digest": digest,
            "rc": run.rc,
            "hosts": {
                r.host: r.model_dump(include={"ok", "changed", "failed", "unreachable"})
                for r in rows
            },
        },
        settings=settings,
    )
    return rows


def get(flow_run_id: str, settings: FluidSettings | None = None) -> AgentRunRecord | None:
    with store.session(settings or get_settings()) as s:
        return s.get(AgentRunRecord, flow_run_id)


def open_runs(settings: FluidSettings | None = None) -> list[AgentRunRecord]:
    """The runs whose record has no final status yet."""
    with store.session(settings or get_settings()) as s:
        return list(
            s.exec(select(AgentRunRecord).where(AgentRunRecord.status.not_in(FINAL_RUN_STATUSES)))
        )


def decisions(flow_run_id: str, settings: FluidSettings | None = None) -> list[DecisionRecord]:
    """A run's decisions, first attempt first."""
    with store.session(settings or get_settings()) as s:
        return list(
            s.exec(
                select(DecisionRecord)
                .where(DecisionRecord.flow_run_id == flow_run_id)
                .order_by(DecisionRecord.attempt)
            )
        )


def applies(flow_run_id: str, settings: FluidSettings | None = None) -> list[ApplyRecord]:
    with store.session(settings or get_settings()) as s:
        return list(s.exec(select(ApplyRecord).where(ApplyRecord.flow_run_id == flow_run_id)))


class RunRecorder:
    """The one interface a flow keeps its run's record through: what the run is doing, each
    decision, the apply, and how it ended (recorded once, by `end` or by `failing`)."""

    def __init__(self, flow_run_id: str, settings: FluidSettings | None = None) -> None:
        self.flow_run_id = flow_run_id
        self.settings = settings

    @classmethod
    def start(
        cls, flow_run_id: str, task: str, production: str, settings: FluidSettings | None = None
    ) -> RunRecorder:
        """The recorder of a run whose record is made now (a resumed run finds it as it was)."""
        start(flow_run_id, task, production, settings)
        return cls(flow_run_id, settings)

    def update(self, **fields: object) -> None:
        """Set fields of the run's record (its final status, once recorded, stays)."""
        update(self.flow_run_id, self.settings, **fields)

    def decide(self, attempt: int, outcome: str, **details: object) -> DecisionRecord:
        """Store the decision on `attempt` (see `decide`)."""
        return decide(self.flow_run_id, attempt, outcome, settings=self.settings, **details)

    def record_apply(self, run: PlaybookRun, digest: str) -> list[ApplyRecord]:
        """Store the apply's per-host results (see `record_apply`)."""
        return record_apply(self.flow_run_id, run, digest, self.settings)

    def check_approval(self, approved: str | None, sealed: Path) -> str:
        """The digest to apply, once approval, record and sealed copy agree (`check_approval`)."""
        return check_approval(self.flow_run_id, approved, sealed, self.settings)

    def proposed_digest(self) -> str | None:
        """The digest stored for the run's latest proposal."""
        return proposed_digest(self.flow_run_id, self.settings)

    def end(self, status: str, message: str = "") -> None:
        """Record how the run ended; the first final status stays."""
        finish(self.flow_run_id, status, message, self.settings)

    @contextmanager
    def failing(self, passes: tuple[type[BaseException], ...] = ()) -> Iterator[RunRecorder]:
        """Around the run's work: an exception leaving it is recorded as the run's failure
        (`TypeName: message`), except one of `passes`, which ends nothing (a suspension)."""
        try:
            yield self
        except passes:
            raise
        except BaseException as e:
            self.end("failed", f"{type(e).__name__}: {e}")
            raise


def attempt_dir(flow_run_id: str, attempt: int, settings: FluidSettings | None = None) -> Path:
    """The private folder of one attempt of a run (under FLUID_HOME's runs folder)."""
    settings = settings or get_settings()
    private_dir(settings.runs_dir / flow_run_id)
    return private_dir(settings.runs_dir / flow_run_id / f"attempt-{attempt}")


def seal(source: Path, dest: Path) -> str:
    """Copy the exported playbook `source` to `dest` read-only (files 0400, folders 0500),
    replacing an earlier copy there; the copy's digest, checked against its DIGEST file.

    Only regular files and folders are copied: a link or a device in an export is refused.
    """
    from infra.state.export import digest

    source, dest = Path(source), Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    unseal(tmp)
    try:
        _copy_tree(source, tmp)
        sealed = digest(tmp)
        recorded = (tmp / "DIGEST").read_text().strip() if (tmp / "DIGEST").is_file() else None
        if recorded != sealed:
            raise PlaybookChanged(
                f"the exported playbook in {source} does not match its DIGEST (it says "
                f"{recorded}, its files hash to {sealed}): it changed after the export"
            )
        _make_read_only(tmp)
        unseal(dest)
        os.rename(tmp, dest)
    except BaseException:
        unseal(tmp)
        raise
    return sealed


def _copy_tree(source: Path, dest: Path) -> None:
    dest.mkdir(mode=0o700)
    for entry in sorted(source.iterdir()):
        st = entry.lstat()
        target = dest / entry.name
        if stat.S_ISDIR(st.st_mode):
            _copy_tree(entry, target)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(entry, target, follow_symlinks=False)
        else:
            raise PlaybookChanged(
                f"{entry} is neither a file nor a folder: a playbook fluid exported has none"
            )


def _make_read_only(root: Path) -> None:
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.chmod(os.path.join(folder, name), SEALED_FILE)
        for name in dirs:
            os.chmod(os.path.join(folder, name), SEALED_DIR)
    os.chmod(root, SEALED_DIR)


def unseal(path: Path) -> None:
    """Remove a sealed copy (its read-only folders made writable first); absent is fine."""
    path = Path(path)
    if not path.exists():
        return
    for folder, dirs, _files in os.walk(path):
        os.chmod(folder, 0o700)
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o700)
    shutil.rmtree(path)


def propose(flow_run_id: str, digest: str, settings: FluidSettings | None = None) -> None:
    """Store the digest of the sealed playbook a reviewer is about to be shown.

    Once, by the task that seals it: a resumed run replaying its cached steps leaves it as
    stored, so it stays a record made before the wait.
    """
    update(flow_run_id, settings, digest=digest)


def proposed_digest(flow_run_id: str, settings: FluidSettings | None = None) -> str | None:
    """The digest `propose` stored for the run's latest proposal (None: none yet)."""
    rec = get(flow_run_id, settings)
    return rec.digest if rec is not None else None


def check_approval(
    flow_run_id: str, approved: str | None, sealed: Path, settings: FluidSettings | None = None
) -> str:
    """The digest to apply, once the approval's digest, the one stored before the wait and the
    one of the sealed copy agree; PlaybookChanged (saying which differ) otherwise."""
    from infra.state.export import digest

    stored = proposed_digest(flow_run_id, settings)
    if stored is None:
        raise PlaybookChanged(
            "fluid has no digest on record for this proposal: nothing was applied"
        )
    if approved != stored:
        raise PlaybookChanged(
            f"the approval names playbook digest {approved}, but the playbook shown for review "
            f"has digest {stored}: nothing was applied"
        )
    actual = digest(sealed) if Path(sealed).is_dir() else "(the playbook is gone)"
    if actual != stored:
        raise PlaybookChanged(
            f"the playbook in {sealed} changed after it was shown for approval (shown and "
            f"approved: {stored}, now: {actual}): nothing was applied"
        )
    return actual
