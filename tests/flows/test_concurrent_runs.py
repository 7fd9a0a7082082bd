"""Sandboxes per host are limited: a burst of agent-task runs queues for slots, and all complete.

Four runs are submitted at once through fluid's real Prefect server and worker on a host
limited to four sandboxes, i.e. two runs at a time (each holds its own sandbox and its replay's).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.sorting import LogSort
from prefect.deployments import run_deployment
from sqlmodel import select

from infra.machines import sandboxes
from infra.records import runs, store
from infra.settings import FluidSettings
from orchestration import control_plane, limits
from tests.conftest import fluid, leftovers

pytestmark = pytest.mark.vm

RUNS = 4
MAX_SANDBOXES = 4
RUNS_AT_ONCE = MAX_SANDBOXES // limits.SLOTS_PER_RUN


@pytest.fixture(scope="module")
def small_host(prefect_stack: control_plane.ControlPlane, settings: FluidSettings) -> Iterator[str]:
    """fluid's worker restarted with a limit of four sandboxes: it hands its settings to its
    flow runs, which set this host's limit from them. The session's worker comes back after."""
    control_plane.stop_worker(settings)
    control_plane.start_worker(settings.model_copy(update={"max_sandboxes": MAX_SANDBOXES}))
    try:
        yield limits.limit_name()
    finally:
        control_plane.stop_worker(settings)
        control_plane.start_worker(settings)


def run_logs(run_id: str) -> list[str]:
    """Every log line of one flow run, oldest first."""
    lines: list[str] = []
    flt = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(run_id)]))
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(
                log_filter=flt, sort=LogSort.TIMESTAMP_ASC, limit=200, offset=len(lines)
            )
            lines += [log.message for log in page]
            if len(page) < 200:
                return lines


def live_sandboxes(run_ids: set[str], settings: FluidSettings) -> list[store.SandboxRecord]:
    """The sandboxes that exist right now for these runs (their own and their replays)."""
    with store.session(settings) as s:
        return list(
            s.exec(select(store.SandboxRecord).where(store.SandboxRecord.owner_run.in_(run_ids)))
        )


def on_production(name: str, command: str):
    return fluid("production", "exec", name, "--", command, check=False)


@pytest.mark.timeout(5400)  # four runs two at a time; cold boots under TCG take a minute each
def test_four_runs_at_once_queue_for_sandbox_slots_and_all_complete(
    production_vm: dict, small_host: str, settings: FluidSettings
) -> None:
    """No more than four sandboxes of the four runs ever exist at once; the runs that found
    the host full say they wait; all four apply their change; every slot and sandbox is freed."""
    production = production_vm["name"]
    for i in range(RUNS):
        assert on_production(production, f"test -e /etc/fluid-concurrent-{i}").returncode == 1

    submitted = [
        run_deployment(
            "agent-task/agent-task",
            parameters={
                "task": f"write /etc/fluid-concurrent-{i}",
                "production": production,
                "agent": {
                    "kind": "scripted",
                    "steps": [{"write": f"/etc/fluid-concurrent-{i}", "content": f"run {i}\n"}],
                },
                "auto_approve": True,
            },
            timeout=0,
        )
        for i in range(RUNS)
    ]
    ids = {str(fr.id) for fr in submitted}

    # Watch the runs' sandboxes once a second until every run has ended.
    peak_sandboxes, peak_runs = 0, 0
    seen: dict[str, str] = {}  # sandbox id -> run id
    final: dict[str, object] = {}
    deadline = time.monotonic() + 3600
    with get_client(sync_client=True) as client:
        while len(final) < RUNS:
            assert time.monotonic() < deadline, f"runs still going after an hour: {final}"
            live = live_sandboxes(ids, settings)
            peak_sandboxes = max(peak_sandboxes, len(live))
            peak_runs = max(peak_runs, len({r.owner_run for r in live}))
            seen |= {r.id: str(r.owner_run) for r in live}
            for run_id in ids - final.keys():
                state = client.read_flow_run(UUID(run_id)).state
                if state is not None and state.is_final():
                    final[run_id] = state
            time.sleep(1)

    not_completed = {i: (s.name, s.message) for i, s in final.items() if not s.is_completed()}
    assert not not_completed, not_completed
    for i in range(RUNS):
        r = on_production(production, f"cat /etc/fluid-concurrent-{i}")
        assert r.stdout == f"run {i}\n".encode(), r
    for run_id in ids:
        rec = runs.get(run_id)
        assert rec is not None and rec.status == "applied", rec
    # Submitted with run_deployment and no tags, as the UI does: each run tagged itself.
    with get_client(sync_client=True) as client:
        tags = [set(client.read_flow_run(UUID(run_id)).tags) for run_id in ids]
    assert all({f"production:{production}", "agent:scripted"} <= t for t in tags), tags

    # The limit held: never more than four sandboxes (two runs) at once...
    assert peak_sandboxes <= MAX_SANDBOXES, peak_sandboxes
    assert peak_runs <= RUNS_AT_ONCE, peak_runs
    # ...while every run had its own sandbox and a replay sandbox, seen by the watch above.
    per_run = {run_id: sum(1 for r in seen.values() if r == run_id) for run_id in ids}
    assert per_run == {run_id: 2 for run_id in ids}, per_run

    # The runs that found the host full said why they stood still; every run held two slots.
    logs = {run_id: "\n".join(run_logs(run_id)) for run_id in ids}
    host = limits.host_name()
    waiting = re.compile(
        rf"waiting for a sandbox slot: \d+ of {MAX_SANDBOXES} in use on {re.escape(host)}"
    )
    waited = [run_id for run_id, text in logs.items() if waiting.search(text)]
    assert len(waited) >= RUNS - RUNS_AT_ONCE, {r: t[-2000:] for r, t in logs.items()}
    holding = f"holding 2 sandbox slots of {MAX_SANDBOXES} on {host} ({small_host})"
    assert all(holding in text for text in logs.values())

    # Every slot is back and nothing of any sandbox is left.
    limit = limits.read_limit(small_host)
    assert limit is not None and (limit.limit, limit.active_slots) == (MAX_SANDBOXES, 0)
    assert live_sandboxes(ids, settings) == []
    for sid in seen:
        assert leftovers(sid, settings) == [], sid
    listing = sandboxes.list_sandboxes(settings)
    assert not set(seen) & {b.id for b in listing.sandboxes}
