"""The store's account of agent-task runs: status, every decision, per-host apply results.

Written by the flow as it goes (idempotently: a resumed run replays its early steps) and by
the janitor for runs that ended without running code (an approval that timed out while the
run was suspended).
"""

from __future__ import annotations

from sqlmodel import select

from infra import audit, store
from infra.playbook_runs import PlaybookRun
from infra.settings import FluidSettings, get_settings
from infra.store import AgentRunRecord, ApplyRecord, DecisionRecord, utcnow

FINAL = {"applied", "rejected", "timed-out", "refused", "failed", "no-change", "apply-failed"}


def start(
    flow_run_id: str, task: str, production: str, settings: FluidSettings | None = None
) -> AgentRunRecord:
    """The run's record, made on first call (a resumed run finds it as it was)."""
    with store.session(settings or get_settings()) as s:
        rec = s.get(AgentRunRecord, flow_run_id)
        if rec is None:
            rec = AgentRunRecord(flow_run_id=flow_run_id, task=task, production=production)
            s.add(rec)
        return rec


def update(flow_run_id: str, settings: FluidSettings | None = None, **fields: object) -> None:
    """Set fields of a run's record (a run that already ended keeps its final status)."""
    with store.session(settings or get_settings()) as s:
        rec = s.get(AgentRunRecord, flow_run_id)
        if rec is None:
            return
        if rec.status in FINAL and "status" in fields:
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
        if rec is None or rec.status in FINAL:
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
        detail={
            "attempt": attempt,
            "outcome": outcome,
            "automatic": automatic,
            "comment": comment,
            "digest": digest,
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
