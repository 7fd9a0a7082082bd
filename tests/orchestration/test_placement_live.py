"""Placement against the real Prefect server: a host is online by its worker's heartbeats,
and runs placed back to back on two live hosts see each other and spread."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.states import Scheduled

from blocks.production_target import ProductionHost, ProductionTarget
from infra.errors import HostUnavailable
from infra.host.identity import host_id
from infra.records import hosts
from infra.settings import FluidSettings
from orchestration import control_plane, liveness, placement
from tests.conftest import fluid


@pytest.fixture
def second_host(prefect_stack, settings: FluidSettings) -> Iterator[str]:
    """A second host's worker, live on this machine for the test; drained after it."""
    other = f"t-second-{os.urandom(3).hex()}"
    control_plane.start_worker(settings, host=other)
    try:
        yield other
    finally:
        control_plane.stop_worker(settings, host=other)
        hosts.set_state(other, "draining", "a test's second host, gone", settings)


def test_a_host_whose_worker_never_sent_a_heartbeat_is_skipped(prefect_stack, settings) -> None:
    silent = f"t-silent-{os.urandom(3).hex()}"
    hosts.add(silent, settings=settings)
    try:
        assert placement.place(settings=settings).id == host_id(settings)
        with pytest.raises(
            HostUnavailable, match=rf"host {silent} cannot take the run: worker offline \(never"
        ):
            placement.place(pinned=silent, settings=settings)
    finally:
        hosts.set_state(silent, "draining", "a test's host that never ran", settings)


def test_runs_placed_back_to_back_spread_over_live_hosts(second_host: str, settings) -> None:
    assert liveness.workers(settings)[second_host].online
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("agent-task/agent-task")
        first = placement.place(settings=settings)
        # Placed, not yet started (due in an hour, so no worker takes it meanwhile).
        waiting = client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"task": "t", "production": "p", "agent": "x"},
            work_queue_name=first.work_queue,
            state=Scheduled(scheduled_time=datetime.now(UTC) + timedelta(hours=1)),
        )
        try:
            second = placement.place(settings=settings)
        finally:
            client.delete_flow_run(waiting.id)
    assert {first.id, second.id} == {host_id(settings), second_host}


def agent_task_runs() -> set[str]:
    """The ids of every agent-task flow run on the server."""
    with get_client(sync_client=True) as client:
        flt = FlowFilter(name=FlowFilterName(any_=["agent-task"]))
        return {str(fr.id) for fr in client.read_flow_runs(flow_filter=flt, limit=200)}


def test_a_run_is_placed_only_where_the_targets_and_its_own_labels_are(
    prefect_stack, tmp_path: Path
) -> None:
    """The production target's labels and `fluid run --label` filter the hosts; with no host
    carrying them the run is refused before it exists, naming the labels wanted."""
    name = f"t-dmz-{os.urandom(3).hex()}"
    ProductionTarget(
        hosts=[ProductionHost(name="web-1", address="web-1.example.com")],
        certificate_principal="deploy",
        labels={"net": "dmz"},
    ).save(name)
    steps = tmp_path / "steps.yml"
    steps.write_text("- write: /etc/fluid-dmz\n  content: dmz\n")
    before = agent_task_runs()
    try:
        r = fluid("run", "write a file", "--steps", str(steps), "--production", name, check=False)
        assert r.returncode != 0 and b"labels do not match (wanted net=dmz)" in r.stderr, r
        r = fluid(
            "run", "write", "--steps", str(steps), "--production", name, "--label", "zone=b",
            check=False,
        )  # fmt: skip
        assert r.returncode != 0 and b"(wanted net=dmz, zone=b)" in r.stderr, r
        assert b"Traceback" not in r.stderr
    finally:
        ProductionTarget.delete(name)
    assert agent_task_runs() == before
