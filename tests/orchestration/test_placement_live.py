"""Placement against the real Prefect server: a host is online by its worker's heartbeats,
and runs placed back to back on two live hosts see each other and spread."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Scheduled

from infra.errors import HostUnavailable
from infra.host.identity import host_id
from infra.records import hosts
from infra.settings import FluidSettings
from orchestration import control_plane, liveness, placement


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
