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
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.exceptions import FlowPauseTimeout, Pause
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled, Completed, Failed, State
from pydantic import BaseModel, Field, create_model

from blocks.production_target import ProductionTarget
from infra.agents import AgentSpec
from infra.errors import ProductionBlockError, SandboxNotFound
from infra.escaping import md_code, md_text
from infra.machines import sandboxes
from infra.machines.owners import Owner
from infra.records import runs
from infra.records.runs import PlaybookChanged
from infra.settings import get_settings
from infra.state.base import ChangeSet
from orchestration.limits import sandbox_slots
from tasks.agent_task import (
    Proposal,
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
from tasks.agents import build_agent, load_guardrails
from tasks.sandbox import destroy_sandbox

AUTOMATIC_APPROVER = "fluid (automatic)"
# Changes listed in the approval form; the rest are counted and pointed to.
SUMMARY_LIMIT = 30
DIGEST_HELP = "The digest of the playbook shown above: the decision is about this playbook only"


class Approval(RunInput):
    """The reviewer's decision on the proposed playbook, naming it by its digest."""

    # Rejecting is the default: a resume without a decision must never apply anything.
    decision: Literal["approve", "reject"] = Field(
        default="reject", description="approve applies the playbook to production"
    )
    digest: str = Field(pattern="^[0-9a-f]{64}$", title="Digest", description=DIGEST_HELP)
    approver: str = Field(min_length=1, description="Your name, stored with the decision")
    comment: str = Field(
        default="", description="Why; on reject the agent gets it as feedback for its next try"
    )


def approval_form(digest: str) -> type[Approval]:
    """The form for one proposal: Prefect's server accepts no digest but `digest` (the form's
    schema is stored with the pause), and the UI shows it filled in."""
    return create_model(
        "Approval",
        __base__=Approval,
        digest=(
            Literal[digest],  # type: ignore[valid-type]
            Field(title="Digest", description=DIGEST_HELP, json_schema_extra={"default": digest}),
        ),
    )


def pause_key(attempt: int, digest: str) -> str:
    """Each pause is its attempt and digest: a resumed run whose proposal came out different
    asks again instead of receiving an answer about another playbook."""
    return f"attempt-{attempt}-{digest}"


class AgentTaskResult(BaseModel):
    """How an agent task ended."""

    flow_run_id: str
    outcome: Literal["applied", "rejected", "timed-out", "no-change", "apply-failed"]
    attempts: int
    production: str
    digest: str | None = None
    approver: str | None = None
    hosts: dict[str, dict[str, int]] = {}


def _review_description(task: str, proposal: Proposal, production: str, max_attempts: int) -> str:
    # Markdown for the UI: everything but fluid's own words is escaped (infra/escaping.py).
    return "\n".join(
        [
            f"## Approve this change to **{md_text(production)}**?",
            "",
            f"Task: {md_text(task)}",
            "",
            f"Attempt {proposal.attempt} of {max_attempts}. Replay on a fresh sandbox: "
            f"{md_text(proposal.verification)}",
            "",
            f"Playbook digest: {md_code(proposal.digest)}",
            "",
            *([proposal.exclusions, ""] if proposal.exclusions else []),
            f"{proposal.changes} change(s):",
            "",
            proposal.summary,
            "",
            "The full diff, the playbook and the check-mode preview are in this run's "
            "Artifacts. Approve applies exactly this playbook (the form's digest names it); "
            "reject sends your comment to the agent, which tries again from a clean sandbox.",
        ]
    )


def _exclusions(changeset: ChangeSet, accepted: list[str]) -> str:
    """The changes the playbook leaves out, each named with why (all of them: a reviewer
    approves knowing what production will not get); Markdown, or "" when there are none."""
    excluded = [c for c in changeset.changes if c.excluded]
    if not excluded:
        return ""
    lines = [
        f"**Not in the playbook: {len(excluded)} change(s) no replay reproduces** "
        "(production will not get them from this playbook):",
        "",
    ]
    for c in excluded:
        state = "accepted by this run" if c.key in accepted else "NOT accepted"
        lines.append(f"- {md_text(c.kind)} {md_code(c.key)}: {md_text(c.exclusion())} ({state})")
    return "\n".join(lines)


def _summary(changeset: ChangeSet, whole: Path) -> str:
    """The changes as a Markdown list, cut at SUMMARY_LIMIT saying how many more and where;
    the changes the playbook leaves out come first (and are listed again above, whole)."""
    lines = [
        f"- {c.action} {c.kind} {md_code(c.key)}"
        + (f" ({md_text('; '.join(c.details))})" if c.details else "")
        + ("" if c.exported else " *(not exported)*")
        for c in sorted(changeset.changes, key=lambda c: not c.excluded)[:SUMMARY_LIMIT]
    ]
    more = len(changeset.changes) - SUMMARY_LIMIT
    if more > 0:
        lines.append(
            f"- *{more} more changes not shown here; the whole change set is in the "
            f"`agent-change` artifact and in {md_code(str(whole))}*"
        )
    return "\n".join(lines)


def _ask(proposal: Proposal, description: str, timeout_s: int, suspend: bool) -> Approval:
    form = approval_form(proposal.digest).with_initial_data(description=description)
    key = pause_key(proposal.attempt, proposal.digest)
    if suspend:
        return suspend_flow_run(wait_for_input=form, timeout=timeout_s, key=key)
    return pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=2, key=key)


@flow(name="agent-task", persist_result=True)
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
) -> State:
    """Do `task` in a sandbox with `agent`; apply the proven change to `production` once approved.

    `agent` is scripted steps, an LLM endpoint, or the name of a saved LLM block;
    `guardrails` names a Guardrails block (fluid's defaults when empty).
    `accept_exclusions` names (by key) the changes the playbook may leave out; any other change
    it leaves out fails the proof, and so the run, before a replay boots.
    `auto_approve` skips the human (the approval is stored as automatic). Ends Completed when
    applied (or nothing changed), Cancelled when rejected or not approved in time, Failed
    otherwise. The sandbox is destroyed however the run ends.
    """
    logger = get_run_logger()
    run_id = str(flow_run.get_id())
    # A deployment's run can suspend (no process held while waiting); a direct call pauses.
    suspend = deployment.id is not None
    runs.start(run_id, task, production)
    # Fail on a bad production name, agent or guardrails before any VM exists.
    load_target(production)
    build_agent(agent)
    load_guardrails(guardrails)

    # Held for as long as this run's sandboxes live: its own and the replay's. A run
    # suspended for approval holds none: its process ends (orchestration/limits.py).
    with sandbox_slots(run_id, logger.info):
        box = prepare_sandbox(run_id, image, sandbox_ttl_minutes)
        sandboxes.set_owner(box.id, Owner.this_process(run_id))
        runs.update(run_id, sandbox_id=box.id)
        suspended = False
        try:
            feedback: str | None = None
            for attempt in range(1, max_attempts + 1):
                runs.update(run_id, status="working", attempts=attempt)
                run_agent(run_id, box.id, task, agent, attempt, feedback, guardrails)
                changeset = diff_attempt(run_id, box.id, attempt)
                if changeset.empty:
                    runs.finish(run_id, "no-change", "the agent changed nothing")
                    logger.info("the agent changed nothing: there is nothing to approve")
                    return Completed(
                        message="no change",
                        data=AgentTaskResult(
                            flow_run_id=run_id,
                            outcome="no-change",
                            attempts=attempt,
                            production=production,
                        ),
                    )
                # Sealed: proven, previewed, shown and applied as this one read-only copy.
                sealed = export_attempt(run_id, changeset, attempt)
                playbook = Path(sealed.path)
                report = prove_playbook(run_id, playbook, attempt, accept_exclusions)
                if report.excluded:
                    why = (
                        f"the playbook leaves out {len(report.excluded)} change(s) this run did "
                        f"not accept: {report.error}"
                    )
                    runs.finish(run_id, "failed", why)
                    return Failed(message=f"{why}; nothing was replayed or applied")
                if not report.passed:
                    runs.finish(run_id, "failed", f"replay failed: {report.summary()}")
                    return Failed(
                        message=f"the playbook did not reproduce the change on a fresh sandbox: "
                        f"{report.summary()}; nothing was applied"
                    )
                preview_on_production(run_id, playbook, production, attempt)
                proposal = Proposal(
                    attempt=attempt,
                    playbook_dir=sealed.path,
                    digest=sealed.digest,
                    changes=len(changeset.changes),
                    summary=_summary(changeset, changeset_file(run_id, attempt)),
                    verification=report.summary(),
                    verified=report.passed,
                    exclusions=_exclusions(changeset, accept_exclusions or []),
                )
                runs.update(run_id, status="awaiting-approval")

                if auto_approve:
                    decision = Approval(
                        decision="approve",
                        digest=proposal.digest,
                        approver=AUTOMATIC_APPROVER,
                        comment="auto-approve",
                    )
                else:
                    extend_for_approval(box.id, approval_timeout_s)
                    logger.info(
                        "waiting up to %d s for approval of digest %s (attempt %d)",
                        approval_timeout_s,
                        proposal.digest,
                        attempt,
                    )
                    if suspend:
                        # Nothing runs while suspended: the janitor must not think we crashed.
                        sandboxes.set_owner(box.id, Owner(run=run_id))
                    try:
                        decision = _ask(
                            proposal,
                            _review_description(task, proposal, production, max_attempts),
                            approval_timeout_s,
                            suspend,
                        )
                    except FlowPauseTimeout:
                        runs.decide(run_id, attempt, "timed-out", digest=proposal.digest)
                        runs.finish(run_id, "timed-out", "no approval in time; nothing applied")
                        return Cancelled(message="no approval in time: nothing was applied")
                    sandboxes.set_owner(box.id, Owner.this_process(run_id))

                if decision.decision == "approve":
                    # Bound to what was shown: the approval's digest, the one stored before
                    # the wait and the sealed copy's must agree, or nothing is applied.
                    try:
                        runs.check_approval(run_id, decision.digest, playbook)
                    except PlaybookChanged as e:
                        return _refuse(run_id, attempt, decision, auto_approve, e)
                outcome = "approved" if decision.decision == "approve" else "rejected"
                runs.decide(
                    run_id,
                    attempt,
                    outcome,
                    approver=decision.approver,
                    automatic=auto_approve,
                    comment=decision.comment,
                    digest=proposal.digest,
                )
                logger.info(
                    "%s by %s%s",
                    outcome,
                    decision.approver,
                    f": {decision.comment}" if decision.comment else "",
                )
                if decision.decision == "reject":
                    feedback = decision.comment or "rejected without a comment"
                    continue

                try:
                    applied = apply_to_production(
                        run_id, attempt, playbook, decision.digest, production
                    )
                except PlaybookChanged as e:
                    return _refuse(run_id, attempt, decision, auto_approve, e)
                runs.record_apply(run_id, applied, proposal.digest)
                result = AgentTaskResult(
                    flow_run_id=run_id,
                    outcome="applied" if applied.succeeded else "apply-failed",
                    attempts=attempt,
                    production=production,
                    digest=proposal.digest,
                    approver=decision.approver,
                    hosts={
                        h: {"ok": applied.ok.get(h, 0), "changed": applied.changed.get(h, 0)}
                        for h in set(applied.ok) | set(applied.changed)
                    },
                )
                if not applied.succeeded:
                    runs.finish(run_id, "apply-failed", applied.output_tail[-500:])
                    return Failed(message=f"applying to {production} failed", data=result)
                runs.finish(run_id, "applied", f"approved by {decision.approver}")
                return Completed(message=f"applied to {production}", data=result)

            runs.finish(run_id, "rejected", f"rejected {max_attempts} time(s)")
            return Cancelled(message=f"rejected {max_attempts} time(s): nothing was applied")
        except Pause:
            suspended = True
            raise
        except BaseException as e:
            runs.finish(run_id, "failed", f"{type(e).__name__}: {e}")
            raise
        finally:
            if not suspended:
                _publish_audit(run_id, box.id)
                _destroy(box.id)


def _refuse(
    run_id: str, attempt: int, decision: Approval, automatic: bool, why: PlaybookChanged
) -> State:
    """An approval that does not match what was shown: recorded as refused, nothing applied."""
    get_run_logger().error("refused to apply: %s", why)
    runs.decide(
        run_id,
        attempt,
        "refused",
        approver=decision.approver,
        automatic=automatic,
        comment=str(why),
        digest=runs.proposed_digest(run_id),
    )
    runs.finish(run_id, "refused", str(why))
    return Failed(message=f"refused: {why}")


def load_target(production: str) -> ProductionTarget:
    """The ProductionTarget block `production`; ProductionBlockError saying how to make one."""
    try:
        return ProductionTarget.load(production)
    except ValueError as e:
        raise ProductionBlockError(
            f"no ProductionTarget block named {production!r}: create one with `fluid production "
            f"create {production}` (a VM) or save a ProductionTarget for your hosts ({e})"
        ) from e


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
