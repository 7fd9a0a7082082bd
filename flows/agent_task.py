"""The agent-task flow: sandbox → agent → proven playbook → human approval → production.

One flow run is one agent task. The agent works in a fresh sandbox; its change is captured,
exported as a playbook, proven by replay on another fresh sandbox and previewed against
production in check mode. Then the run waits for a typed approval in the Prefect UI (or
`fluid approve`): approve applies exactly the approved playbook; reject hands the comment to
the agent and starts again from the "before" checkpoint; no answer in time applies nothing.

An approval is bound to what the reviewer was shown. The playbook is sealed (a read-only copy
in the run's folder, its digest stored in fluid's database) before it is proven; the form
names that digest and the server accepts no other; each pause is keyed by attempt and digest.
After the decision the approval's digest, the stored one and the sealed copy's must agree,
or the run is refused (nothing applied, a "refused" decision in the audit trail).

Run from a deployment, the wait is a suspension: no process is held, and on resume the flow
function runs again from the top while every task before the approval comes back from the
cache. Called directly from Python, it pauses in process instead.

A run holds two of its host's sandbox slots (FLUID_MAX_SANDBOXES, orchestration/limits.py) while its
sandboxes live, so a burst of runs queues instead of exhausting memory. A suspended run has
no process and so holds no slots (its waiting sandbox is not counted); when resumed it takes
them again, queueing if the host is full, before it goes on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout, Pause
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled, Completed, Failed, State
from pydantic import BaseModel, Field

from blocks.loading import build_agent, load_guardrails, load_target
from flows.approval import (
    Approval,
    Proposal,
    ask,
    automatic_approval,
    exclusions,
    review_description,
    summary,
)
from infra.agents import AgentSpec
from infra.errors import SandboxNotFound, WrongHost
from infra.host.identity import host_id
from infra.machines import sandboxes
from infra.machines.owners import Owner
from infra.records.hosts import work_queue
from infra.records.runs import PlaybookChanged, RunRecorder
from infra.settings import get_settings
from orchestration.limits import sandbox_slots
from orchestration.run_labels import run_name, run_tags
from tasks.agent_task import (
    apply_to_production,
    changeset_file,
    diff_attempt,
    export_attempt,
    extend_for_approval,
    prepare_sandbox,
    preview_on_production,
    prove_playbook,
    publish_audit,
    run_agent,
)
from tasks.sandbox import destroy_sandbox


class AgentTaskResult(BaseModel):
    """How an agent task ended."""

    flow_run_id: str
    outcome: Literal["applied", "rejected", "timed-out", "no-change", "apply-failed"]
    attempts: int
    production: str
    digest: str | None = None
    approver: str | None = None
    hosts: dict[str, dict[str, int]] = {}


class Outcome(BaseModel):
    """How the run ends: the status and note its record keeps, and the state it ends in."""

    status: Literal[
        "applied", "rejected", "timed-out", "no-change", "apply-failed", "failed", "refused"
    ]
    note: str
    state: Literal["completed", "cancelled", "failed"]
    message: str
    result: AgentTaskResult | None = None

    def final_state(self) -> State:
        """The flow run's final state, carrying the result when there is one."""
        make = {"completed": Completed, "cancelled": Cancelled, "failed": Failed}[self.state]
        if self.result is None:
            return make(message=self.message)
        return make(message=self.message, data=self.result)


@dataclass(frozen=True)
class Mission:
    """One run's task and terms, as its steps need them."""

    run_id: str
    record: RunRecorder
    sandbox_id: str
    task: str
    production: str
    agent: AgentSpec | str
    guardrails: str | None
    accept_exclusions: list[str] | None
    approval_timeout_s: int
    max_attempts: int
    auto_approve: bool
    # A deployment's run can suspend (no process held while waiting); a direct call pauses.
    suspend: bool


def _run_name() -> str:
    # A run started from the UI or Python gets its readable name here (fluid run names it
    # when it submits).
    params = flow_run.parameters
    return run_name(params.get("task", ""), params.get("production", ""))


def _tag_run(run_id: str, production: str, agent: AgentSpec | str, host: str) -> None:
    # `fluid run` tags a run when it submits it; one started from the UI, a schedule or
    # Python gets the same tags here, so the runs list filters every run alike.
    have = list(flow_run.tags)
    missing = [t for t in run_tags(production, agent, host) if t not in have]
    if missing:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(run_id), tags=have + missing)


@flow(name="agent-task", persist_result=True, flow_run_name=_run_name)
def agent_task(
    task: str,
    production: str,
    agent: AgentSpec | str,
    image: str = "debian-12",
    approval_timeout_s: Annotated[int, Field(ge=10)] = 3600,
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3,
    auto_approve: bool = False,
    sandbox_ttl_minutes: Annotated[int, Field(ge=10)] = 120,
    guardrails: str | None = None,
    accept_exclusions: list[str] | None = None,
    host: str | None = None,
) -> State:
    """Do `task` in a sandbox with `agent`; apply the proven change to `production` once approved.

    `agent` is scripted steps, an LLM endpoint, or the name of a saved LLM block;
    `guardrails` names a Guardrails block (fluid's defaults when empty).
    `accept_exclusions` names (by key) the changes the playbook may leave out; any other change
    it leaves out fails the proof, and so the run, before a replay boots.
    `auto_approve` skips the human (the approval is stored as automatic). Ends Completed when
    applied (or nothing changed), Cancelled when rejected or not approved in time, Failed
    otherwise. The sandbox is destroyed however the run ends.
    `host` is the host the run was placed on (orchestration/placement.py); started on any
    other, the run fails at once, before any VM or record exists.
    """
    # A suspended run resumes on the work queue it was submitted to, so on its own host's
    # worker; this check also catches a run moved to another queue by hand.
    here = host_id()
    if host is not None and host != here:
        raise WrongHost(
            f"this run was placed on host {host!r} but started on host {here!r}: only "
            f"{host}'s worker (queue {work_queue(host)}) may run it; check that no other "
            "worker polls that queue, or submit the run again"
        )
    logger = get_run_logger()
    run_id = str(flow_run.get_id())
    _tag_run(run_id, production, agent, here)
    record = RunRecorder.start(run_id, task, production)
    # Fail on a bad production name, agent or guardrails before any VM exists.
    load_target(production)
    build_agent(agent)
    load_guardrails(guardrails)

    # Held for as long as this run's sandboxes live: its own and the replay's. A run
    # suspended for approval holds none: its process ends (orchestration/limits.py).
    with sandbox_slots(run_id, logger.info):
        box = prepare_sandbox(run_id, image, sandbox_ttl_minutes)
        sandboxes.set_owner(box.id, Owner.this_process(run_id))
        record.update(sandbox_id=box.id)
        with _sandbox_kept_only_while_suspended(run_id, box.id), record.failing(passes=(Pause,)):
            mission = Mission(
                run_id=run_id,
                record=record,
                sandbox_id=box.id,
                task=task,
                production=production,
                agent=agent,
                guardrails=guardrails,
                accept_exclusions=accept_exclusions,
                approval_timeout_s=approval_timeout_s,
                max_attempts=max_attempts,
                auto_approve=auto_approve,
                suspend=deployment.id is not None,
            )
            outcome = _attempts(mission)
            record.end(outcome.status, outcome.note)
            return outcome.final_state()


def _attempts(m: Mission) -> Outcome:
    """Propose, decide, apply; a rejection sends the agent back with the reviewer's comment."""
    feedback: str | None = None
    for attempt in range(1, m.max_attempts + 1):
        m.record.update(status="working", attempts=attempt)
        proposal = propose(m, attempt, feedback)
        if isinstance(proposal, Outcome):
            return proposal
        decision = decide(m, proposal)
        if isinstance(decision, Outcome):
            return decision
        if decision.decision == "reject":
            feedback = decision.comment or "rejected without a comment"
            continue
        return apply(m, proposal, decision)
    return Outcome(
        status="rejected",
        note=f"rejected {m.max_attempts} time(s)",
        state="cancelled",
        message=f"rejected {m.max_attempts} time(s): nothing was applied",
    )


def propose(m: Mission, attempt: int, feedback: str | None) -> Proposal | Outcome:
    """The agent works; its change is diffed, exported and sealed, proven by replay and
    previewed on production. The proposal to review, or how the run ends (no change, no proof)."""
    run_agent(m.run_id, m.sandbox_id, m.task, m.agent, attempt, feedback, m.guardrails)
    changeset = diff_attempt(m.run_id, m.sandbox_id, attempt)
    if changeset.empty:
        get_run_logger().info("the agent changed nothing: there is nothing to approve")
        return Outcome(
            status="no-change",
            note="the agent changed nothing",
            state="completed",
            message="no change",
            result=AgentTaskResult(
                flow_run_id=m.run_id,
                outcome="no-change",
                attempts=attempt,
                production=m.production,
            ),
        )
    # Sealed: proven, previewed, shown and applied as this one read-only copy.
    sealed = export_attempt(m.run_id, changeset, attempt)
    playbook = Path(sealed.path)
    report = prove_playbook(m.run_id, playbook, attempt, m.accept_exclusions)
    if report.excluded:
        why = (
            f"the playbook leaves out {len(report.excluded)} change(s) this run did "
            f"not accept: {report.error}"
        )
        return Outcome(
            status="failed",
            note=why,
            state="failed",
            message=f"{why}; nothing was replayed or applied",
        )
    if not report.passed:
        return Outcome(
            status="failed",
            note=f"replay failed: {report.summary()}",
            state="failed",
            message=f"the playbook did not reproduce the change on a fresh sandbox: "
            f"{report.summary()}; nothing was applied",
        )
    preview_on_production(m.run_id, playbook, m.production, attempt)
    proposal = Proposal(
        attempt=attempt,
        playbook_dir=sealed.path,
        digest=sealed.digest,
        changes=len(changeset.changes),
        summary=summary(changeset, changeset_file(m.run_id, attempt)),
        verification=report.summary(),
        verified=report.passed,
        exclusions=exclusions(changeset, m.accept_exclusions or []),
    )
    m.record.update(status="awaiting-approval")
    return proposal


def decide(m: Mission, proposal: Proposal) -> Approval | Outcome:
    """The reviewer's decision on `proposal` (or fluid's own, with auto-approve), stored; how
    the run ends instead when no answer comes in time or the approval names another playbook."""
    logger = get_run_logger()
    attempt = proposal.attempt
    if m.auto_approve:
        decision = automatic_approval(proposal.digest)
    else:
        extend_for_approval(m.sandbox_id, m.approval_timeout_s)
        logger.info(
            "waiting up to %d s for approval of digest %s (attempt %d)",
            m.approval_timeout_s,
            proposal.digest,
            attempt,
        )
        if m.suspend:
            # Nothing runs while suspended: the janitor must not think we crashed.
            sandboxes.set_owner(m.sandbox_id, Owner(run=m.run_id))
        try:
            decision = ask(
                proposal,
                review_description(m.task, proposal, m.production, m.max_attempts),
                m.approval_timeout_s,
                m.suspend,
            )
        except FlowPauseTimeout:
            m.record.decide(attempt, "timed-out", digest=proposal.digest)
            return Outcome(
                status="timed-out",
                note="no approval in time; nothing applied",
                state="cancelled",
                message="no approval in time: nothing was applied",
            )
        sandboxes.set_owner(m.sandbox_id, Owner.this_process(m.run_id))

    if decision.decision == "approve":
        # Bound to what was shown: the approval's digest, the one stored before
        # the wait and the sealed copy's must agree, or nothing is applied.
        try:
            m.record.check_approval(decision.digest, Path(proposal.playbook_dir))
        except PlaybookChanged as e:
            return _refuse(m, attempt, decision, e)
    outcome = "approved" if decision.decision == "approve" else "rejected"
    m.record.decide(
        attempt,
        outcome,
        approver=decision.approver,
        automatic=m.auto_approve,
        comment=decision.comment,
        digest=proposal.digest,
    )
    logger.info(
        "%s by %s%s",
        outcome,
        decision.approver,
        f": {decision.comment}" if decision.comment else "",
    )
    return decision


def apply(m: Mission, proposal: Proposal, decision: Approval) -> Outcome:
    """Apply exactly the approved playbook to production and store each host's result."""
    attempt = proposal.attempt
    try:
        applied = apply_to_production(
            m.run_id, attempt, Path(proposal.playbook_dir), decision.digest, m.production
        )
    except PlaybookChanged as e:
        return _refuse(m, attempt, decision, e)
    m.record.record_apply(applied, proposal.digest)
    result = AgentTaskResult(
        flow_run_id=m.run_id,
        outcome="applied" if applied.succeeded else "apply-failed",
        attempts=attempt,
        production=m.production,
        digest=proposal.digest,
        approver=decision.approver,
        hosts={
            h: {"ok": applied.ok.get(h, 0), "changed": applied.changed.get(h, 0)}
            for h in set(applied.ok) | set(applied.changed)
        },
    )
    if not applied.succeeded:
        return Outcome(
            status="apply-failed",
            note=applied.output_tail[-500:],
            state="failed",
            message=f"applying to {m.production} failed",
            result=result,
        )
    return Outcome(
        status="applied",
        note=f"approved by {decision.approver}",
        state="completed",
        message=f"applied to {m.production}",
        result=result,
    )


def _refuse(m: Mission, attempt: int, decision: Approval, why: PlaybookChanged) -> Outcome:
    """An approval that does not match what was shown: recorded as refused, nothing applied."""
    get_run_logger().error("refused to apply: %s", why)
    m.record.decide(
        attempt,
        "refused",
        approver=decision.approver,
        automatic=m.auto_approve,
        comment=str(why),
        digest=m.record.proposed_digest(),
    )
    return Outcome(status="refused", note=str(why), state="failed", message=f"refused: {why}")


@contextlib.contextmanager
def _sandbox_kept_only_while_suspended(run_id: str, sandbox_id: str) -> Iterator[None]:
    """However the run's work ends, its audit trail is published and its sandbox destroyed;
    but a suspended run (Pause) comes back to its sandbox, so that waits."""
    suspended = False
    try:
        yield
    except Pause:
        suspended = True
        raise
    finally:
        if not suspended:
            _publish_audit(run_id, sandbox_id)
            _destroy(sandbox_id)


def _publish_audit(run_id: str, sandbox_id: str) -> None:
    """The audit artifact; its failure is logged, never the reason a run fails."""
    try:
        publish_audit(run_id, sandbox_id)
    except Exception as e:  # noqa: BLE001 - the trail itself is in the store either way
        get_run_logger().warning("could not publish the audit trail artifact: %s", e)


def _destroy(sandbox_id: str) -> None:
    """Destroy the sandbox as a task; directly when the run is going down too fast for one."""
    try:
        destroy_sandbox(sandbox_id)
    except BaseException:
        with contextlib.suppress(SandboxNotFound):
            sandboxes.destroy(sandbox_id, get_settings())
        raise
