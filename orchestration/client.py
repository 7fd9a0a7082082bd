"""The client side of fluid's flows: submit an agent task, follow it, approve or reject it.

Used by `fluid run`, `fluid approve` and `fluid reject`; a run is placed on a host first
(orchestration/placement.py). Everything goes through the Prefect API (call
orchestration.control_plane.use_prefect() before importing this module).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import LogSort
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from infra.errors import FluidError
from infra.escaping import term_text
from infra.records import runs
from infra.settings import get_settings
from infra.state.base import ChangeSet
from orchestration import placement
from orchestration.run_labels import run_name, run_tags

DEPLOYMENT = "agent-task/agent-task"
PAUSE_EXPIRED = "paused and never resumed"
EXIT_APPLIED, EXIT_FAILED, EXIT_NOT_APPROVED = 0, 1, 3


class RunNotFound(FluidError):
    """No flow run with that id."""


class RunNotWaiting(FluidError):
    """The run is not waiting for a decision."""


class ProposalMismatch(FluidError):
    """What the run waits on is not what a decision names or what fluid has on record."""


class WaitingProposal(BaseModel):
    """The proposal a paused run waits on: attempt, digest and the change it carries."""

    run_id: str
    attempt: int
    digest: str
    task: str | None = None
    production: str | None = None
    playbook_dir: Path
    # From the sealed playbook's changeset.json; None when that copy is not on this host.
    changes: ChangeSet | None = None


PAUSE_KEY = re.compile(r"^attempt-(\d+)-([0-9a-f]{64})$")


def submit(
    parameters: dict[str, Any], host: str | None = None, labels: dict[str, str] | None = None
) -> FlowRun:
    """Place an agent-task run on a host (`host` pins it) and start it on that host's work
    queue from its deployment; returns at once. HostUnavailable when no host can take it."""
    placed = placement.place(pinned=host, labels=labels, image=parameters.get("image"))
    try:
        # The run carries its host, and checks it at start (flows/agent_task.py). Suspended
        # for approval, it resumes on the queue it was submitted to: the same host's worker,
        # where its cached steps' results and its sandbox are.
        return run_deployment(
            DEPLOYMENT,
            parameters={**parameters, "host": placed.id},
            flow_run_name=run_name(parameters["task"], parameters["production"]),
            tags=run_tags(parameters["production"], parameters.get("agent"), placed.id),
            work_queue_name=placed.work_queue,
            timeout=0,
        )
    except ObjectNotFound as e:
        raise FluidError(
            f"no deployment {DEPLOYMENT} on this Prefect server; run `prefect --no-prompt "
            "deploy --all` in the fluid checkout"
        ) from e


def _read(client: Any, run_id: UUID) -> FlowRun:
    try:
        return client.read_flow_run(run_id)
    except ObjectNotFound as e:
        raise RunNotFound(f"no flow run {run_id}") from e


def follow(
    run_id: UUID,
    *,
    print_line: Callable[[str], None],
    on_waiting: Callable[[FlowRun], None],
    poll_s: float = 1.0,
) -> FlowRun:
    """Print the run's logs as they come; call `on_waiting` each time it starts waiting."""
    seen_after: datetime | None = None
    waiting = False
    task_names: dict[UUID, str] = {}
    with get_client(sync_client=True) as client:

        def source(task_run_id: UUID | None) -> str:
            if task_run_id is None:
                return ""
            if task_run_id not in task_names:
                task_names[task_run_id] = client.read_task_run(task_run_id).name
            return f"[{task_names[task_run_id]}] "

        while True:
            fr = _read(client, run_id)
            flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
            if seen_after is not None:
                flt.timestamp = LogFilterTimestamp(after_=seen_after)
            for log in client.read_logs(log_filter=flt, sort=LogSort.TIMESTAMP_ASC, limit=200):
                if seen_after is not None and log.timestamp <= seen_after:
                    continue
                seen_after = log.timestamp
                # Logs carry guest output: no control reaches the operator's terminal.
                line = f"{log.timestamp:%H:%M:%S} {source(log.task_run_id)}{log.message}"
                print_line(term_text(line))
            paused = fr.state is not None and fr.state.is_paused()
            if paused and not waiting:
                on_waiting(fr)
            waiting = paused
            if fr.state is not None and fr.state.is_final():
                return fr
            time.sleep(poll_s)


def exit_code(fr: FlowRun) -> int:
    """0 applied (or nothing to apply), 3 rejected or not approved in time, 1 otherwise."""
    rec = runs.get(str(fr.id))
    status = rec.status if rec else None
    if status in ("applied", "no-change"):
        return EXIT_APPLIED
    if status in ("rejected", "timed-out"):
        return EXIT_NOT_APPROVED
    message = (fr.state.message or "") if fr.state else ""
    if PAUSE_EXPIRED in message:
        return EXIT_NOT_APPROVED
    return EXIT_FAILED


def pause_proposal(fr: FlowRun) -> tuple[int, str] | None:
    """(attempt, digest) of the proposal a paused agent-task run waits on, from its pause."""
    key = fr.state.state_details.pause_key if fr.state is not None else None
    m = PAUSE_KEY.match(key or "")
    return (int(m.group(1)), m.group(2)) if m else None


def waiting(run_id: UUID, *, verify: bool = True) -> WaitingProposal:
    """The proposal run `run_id` waits on; RunNotWaiting when it waits for none.

    The attempt and digest are the pause's own (what Prefect's server holds a decision to).
    With `verify`, ProposalMismatch when fluid's record or the sealed playbook on this host
    disagree with them.
    """
    from infra.state.export import digest as playbook_digest
    from infra.state.export import load_changeset

    with get_client(sync_client=True) as client:
        fr = _read(client, run_id)
    if fr.state is None or not fr.state.is_paused():
        state = fr.state.name if fr.state else "unknown"
        raise RunNotWaiting(f"run {run_id} is {state}, not waiting for approval")
    found = pause_proposal(fr)
    if found is None:
        raise RunNotWaiting(f"run {run_id} is paused, but not for an approval of fluid's")
    attempt, digest = found
    rec = runs.get(str(run_id))
    if verify and rec is not None and rec.digest != digest:
        raise ProposalMismatch(
            f"run {run_id} waits on playbook digest {digest}, but fluid's record says "
            f"{rec.digest}: not deciding; check the run in the UI"
        )
    sealed = get_settings().runs_dir / str(run_id) / f"attempt-{attempt}" / "playbook"
    changes = None
    if verify and sealed.is_dir():
        actual = playbook_digest(sealed)
        if actual != digest:
            raise ProposalMismatch(
                f"the playbook in {sealed} changed after it was proposed (proposed: {digest}, "
                f"now: {actual}); the run would refuse it: not deciding"
            )
        changes = load_changeset(sealed)
    return WaitingProposal(
        run_id=str(run_id),
        attempt=attempt,
        digest=digest,
        task=rec.task if rec else None,
        production=rec.production if rec else None,
        playbook_dir=sealed,
        changes=changes,
    )


def decide(run_id: UUID, decision: str, approver: str, comment: str, digest: str) -> None:
    """Resume a waiting run with a decision about the playbook with `digest`.

    Prefect's server refuses a digest other than the one the run waits on (the run stays
    paused): ProposalMismatch then; RunNotWaiting when it waits for no decision.
    """
    from prefect.exceptions import FlowPauseTimeout, NotPausedError
    from prefect.flow_runs import resume_flow_run

    try:
        resume_flow_run(
            run_id,
            run_input={
                "decision": decision,
                "digest": digest,
                "approver": approver,
                "comment": comment,
            },
        )
    except (NotPausedError, FlowPauseTimeout) as e:
        raise RunNotWaiting(f"run {run_id} is no longer waiting for approval") from e
    except RuntimeError as e:  # the server rejected the input against the form's schema
        raise ProposalMismatch(
            f"Prefect refused the decision for run {run_id}: {e}; it waits on another "
            "playbook now (`fluid approve` shows it)"
        ) from e
