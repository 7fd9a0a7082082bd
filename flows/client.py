"""The client side of fluid's flows: submit an agent task, follow it, approve or reject it.

Used by `fluid run`, `fluid approve` and `fluid reject`; everything goes through the Prefect
API (call infra.control_plane.use_prefect() before importing this module).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import LogSort
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from infra import runs
from infra.errors import FluidError

DEPLOYMENT = "agent-task/agent-task"
PAUSE_EXPIRED = "paused and never resumed"
EXIT_APPLIED, EXIT_FAILED, EXIT_NOT_APPROVED = 0, 1, 3


class RunNotFound(FluidError):
    """No flow run with that id."""


class RunNotWaiting(FluidError):
    """The run is not waiting for a decision."""


def submit(parameters: dict[str, Any]) -> FlowRun:
    """Start an agent-task run from its deployment; returns at once."""
    try:
        return run_deployment(DEPLOYMENT, parameters=parameters, timeout=0)
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
                print_line(f"{log.timestamp:%H:%M:%S} {source(log.task_run_id)}{log.message}")
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


def decide(run_id: UUID, decision: str, approver: str, comment: str) -> None:
    """Resume a waiting run with a decision; RunNotWaiting when it waits for none."""
    from prefect.flow_runs import resume_flow_run

    with get_client(sync_client=True) as client:
        fr = _read(client, run_id)
    if fr.state is None or not fr.state.is_paused():
        state = fr.state.name if fr.state else "unknown"
        raise RunNotWaiting(f"run {run_id} is {state}, not waiting for approval")
    resume_flow_run(
        run_id, run_input={"decision": decision, "approver": approver, "comment": comment}
    )
