"""The janitor as cluster janitor: a host whose worker Prefect reports offline is marked down,
its runs end with a state message naming it, its sandboxes are marked lost, and nothing of
another host is touched. Real Prefect server; the dead host's sandbox is a record only."""

from __future__ import annotations

import os

import pytest
from prefect.client.orchestration import get_client

from flows.janitor import watch_hosts
from infra.records import hosts, runs, store
from infra.records.store import SandboxRecord
from infra.settings import FluidSettings
from orchestration import liveness
from tests.records import add_sandbox_record


@pytest.fixture
def dead_host(prefect_stack, settings: FluidSettings) -> str:
    """A registered host whose worker never answers (another machine, switched off)."""
    host = f"t-dead-{os.urandom(3).hex()}"
    hosts.add(host, settings=settings)
    return host


def test_a_host_whose_worker_is_offline_is_marked_down_and_its_runs_end(
    dead_host: str, settings: FluidSettings
) -> None:
    there = settings.model_copy(update={"host_id": dead_host})
    add_sandbox_record(os.urandom(4).hex(), dead_host, settings)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("agent-task/agent-task")
        placed = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"task": "t", "production": "p", "agent": "x"},
            work_queue_name=hosts.work_queue(dead_host),
        )
        runs.start(str(placed.id), "t", "p", there)
        said: list[str] = []

        down = watch_hosts(client, said.append)

        assert dead_host in [d.host for d in down]
        fr = client.read_flow_run(placed.id)
    assert fr.state is not None and fr.state.is_crashed()
    expected = f"host {dead_host} is down: its worker (fluid-{dead_host}) was never heard from"
    assert fr.state.message == expected
    assert hosts.get(dead_host, settings).state == "down"
    assert runs.get(str(placed.id), settings).status == "failed"
    [lost] = [d.lost_sandboxes for d in down if d.host == dead_host]
    assert len(lost) == 1 and sandbox_lost(lost[0], settings) == expected
    assert f"{expected}; ended 1 run(s), marked 1 sandbox(es) lost" in said
    # This host's worker is alive: it stays ready.
    me = hosts.get(settings_host(settings), settings)
    assert me.state == "ready" and liveness.workers(settings)[me.id].online


def sandbox_lost(sandbox_id: str, settings: FluidSettings) -> str | None:
    with store.session(settings) as s:
        rec = s.get(SandboxRecord, sandbox_id)
    assert rec is not None
    return rec.lost


def settings_host(settings: FluidSettings) -> str:
    from infra.host.identity import host_id

    return host_id(settings)
