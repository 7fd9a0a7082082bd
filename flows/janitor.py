"""The janitor flow: reap sandboxes past their TTL, of ended or dead runs, and orphans; prune
captures, blobs and hash indexes nothing references.

Deployed to run every 10 minutes. A run suspended for approval that times out runs no code
of its own, so this is also where such a run's sandbox goes and its timeout is recorded.

It is also the cluster janitor, on whichever host it runs: a host whose worker Prefect reports
offline is marked down, its unfinished runs end Crashed with a message naming the host, and its
sandboxes are marked lost (its own janitor removes them when it returns). Other hosts' records
are never touched otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkQueueFilter,
    WorkQueueFilterName,
)
from prefect.client.schemas.objects import TERMINAL_STATES
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from infra.machines import janitor as sweeper
from infra.machines.janitor import JanitorReport, RunPhase
from infra.records import hosts, runs
from infra.records.hosts import HostDown
from infra.settings import get_settings
from orchestration import control_plane, liveness

PAUSE_EXPIRED = "paused and never resumed"


def _phase(client: SyncPrefectClient, run_id: str) -> RunPhase:
    try:
        fr = client.read_flow_run(UUID(run_id))
    except ObjectNotFound:
        return "missing"
    state = fr.state
    if state is None:
        return "active"
    if state.is_final():
        return "ended"
    if state.is_paused():
        return "waiting"
    return "active"


def _settle_records(client: SyncPrefectClient) -> list[str]:
    """Give ended runs whose record is still open their final status (e.g. a timeout)."""
    settled = []
    for rec in runs.open_runs(get_settings()):
        try:
            fr = client.read_flow_run(UUID(rec.flow_run_id))
        except ObjectNotFound:
            runs.finish(rec.flow_run_id, "failed", "its flow run no longer exists")
            continue
        if fr.state is None or not fr.state.is_final():
            continue
        message = fr.state.message or ""
        if rec.status == "awaiting-approval" and PAUSE_EXPIRED in message:
            runs.decide(rec.flow_run_id, rec.attempts, "timed-out", digest=rec.digest)
            runs.finish(rec.flow_run_id, "timed-out", "no approval in time; nothing applied")
        else:
            runs.finish(rec.flow_run_id, "failed", f"{fr.state.name}: {message}")
        settled.append(rec.flow_run_id)
    return settled


def _end_runs_of(client: SyncPrefectClient, down: HostDown, message: str) -> list[str]:
    """End every unfinished flow run placed on a host that is down; their ids."""
    queue = hosts.work_queue(down.host)
    placed = client.read_flow_runs(
        work_queue_filter=WorkQueueFilter(name=WorkQueueFilterName(any_=[queue])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(not_any_=list(TERMINAL_STATES))  # type: ignore[arg-type]
            )
        ),
    )
    ended = sorted({str(fr.id) for fr in placed} | set(down.open_runs))
    for run_id in ended:
        # Forced: a Running run's process is gone with its host, a Suspended one has none.
        client.set_flow_run_state(UUID(run_id), Crashed(message=message), force=True)
        runs.finish(run_id, "failed", message)
    return ended


def watch_hosts(client: SyncPrefectClient, say: Callable[[str], None]) -> list[HostDown]:
    """Mark down the hosts whose worker is offline, ending their runs; mark ready again a
    host that was down and whose worker is back. What was marked down."""
    settings = get_settings()
    live = liveness.workers(settings)
    marked = []
    for host in hosts.list_hosts(settings):
        worker = live.get(host.id)
        if worker is not None and worker.last_heartbeat is not None:
            hosts.heartbeat(host.id, worker.last_heartbeat, settings)
        if worker is not None and worker.online:
            if host.state == "down":
                hosts.set_state(host.id, "ready", "its worker is back", settings)
                say(f"host {host.id} is back: its worker sends heartbeats again")
            continue
        if host.state == "down":
            continue
        seen = (
            f"last heard from at {worker.last_heartbeat:%Y-%m-%d %H:%M:%S} UTC"
            if worker is not None and worker.last_heartbeat is not None
            else "never heard from"
        )
        name = control_plane.worker_name(host.id)
        message = f"host {host.id} is down: its worker ({name}) was {seen}"
        down = hosts.mark_down(host.id, message, settings)
        ended = _end_runs_of(client, down, message)
        say(
            f"{message}; ended {len(ended)} run(s), marked {len(down.lost_sandboxes)} "
            "sandbox(es) lost"
        )
        marked.append(down)
    return marked


@flow(name="janitor")
def janitor(grace_s: int = sweeper.DEFAULT_GRACE_S) -> JanitorReport:
    """One sweep; orphans must be `grace_s` seconds old (a sandbox being made is not one)."""
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        report = sweeper.sweep(
            lambda run_id: _phase(client, run_id), grace_s=grace_s, settings=get_settings()
        )
        for r in report.reaped:
            logger.info("reaped sandbox %s: %s", r.sandbox_id, r.reason)
            if r.owner_dead and r.owner_run:
                # Its process is gone, so nothing else will ever end this run.
                client.set_flow_run_state(
                    UUID(r.owner_run),
                    Crashed(
                        message=f"its process died; the janitor removed sandbox {r.sandbox_id}"
                    ),
                    force=True,
                )
        for run_id in _settle_records(client):
            logger.info("recorded the end of run %s", run_id)
        watch_hosts(client, logger.warning)
    for e in report.errors:
        logger.error(e)
    if report.reaped:
        create_table_artifact(
            table=[r.model_dump() for r in report.reaped],
            key="janitor-reaped",
            description="Sandboxes the janitor removed",
        )
    for p in report.pruned:
        if p.count:
            logger.info("pruned %d %s (%d bytes)", p.count, p.what, p.bytes)
    if any(p.count for p in report.pruned):
        create_table_artifact(
            table=[p.model_dump() for p in report.pruned],
            key="janitor-pruned",
            description="What the janitor pruned: captures, blobs and hash indexes no one uses",
        )
    logger.info(
        "%d reaped, %d kept, %d errors", len(report.reaped), len(report.kept), len(report.errors)
    )
    return report
