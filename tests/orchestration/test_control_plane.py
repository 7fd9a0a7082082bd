"""The control plane's per-host parts, against the session's real Prefect server where they
speak to one: each host's work queue is made in fluid's pool when missing (the API refuses
anyone without the auth string), a missing pool is reported with how to make it, each host's
worker has its own pid file, log and janitor deployment on its queue, and a server named by
PREFECT_API_URL is the one a worker works for; starting the server brings fluid's store to the
newest schema first.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from infra.host.identity import host_id
from infra.records import schema
from infra.records.hosts import work_queue
from infra.settings import FluidSettings
from orchestration import control_plane, host_deployments
from orchestration.control_plane import ControlPlaneError
from orchestration.prefect_api import api_status
from tests.records import previous_release


def settings_at(tmp_path: Path, **kw: object) -> FluidSettings:
    return FluidSettings(home=tmp_path / "home", host_id="hv-1", **kw)


def test_each_hosts_worker_has_its_own_pid_file_and_log(tmp_path):
    settings = settings_at(tmp_path)

    pid_a, log_a = control_plane.worker_files(settings, "a")
    pid_b, log_b = control_plane.worker_files(settings, "b")

    assert (pid_a.name, log_a.name) == ("worker-a.pid", "worker-a.log")
    assert pid_a != pid_b and log_a != log_b
    assert pid_a.parent == settings.prefect_dir


def test_status_names_this_host_and_no_worker_when_none_runs(tmp_path):
    st = control_plane.status(settings_at(tmp_path))

    assert st["host"] == "hv-1"
    assert st["worker_pid"] is None and st["workers"] == {}


def test_a_server_named_by_prefect_api_url_is_the_one_workers_use(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.internal:4200/api")
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)

    cp = control_plane.from_environment()

    assert cp is not None and cp.ui_url == "http://prefect.internal:4200"
    # No auth string set: none is handed on (an empty one would be sent as a credential).
    assert cp.client_env() == {"PREFECT_API_URL": "http://prefect.internal:4200/api"}


def test_without_prefect_api_url_fluids_local_server_is_used(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)

    assert control_plane.from_environment() is None


def test_a_missing_host_queue_is_made_once_in_fluids_pool(prefect_stack, settings) -> None:
    cp = prefect_stack
    queue = f"host-t-q-{os.urandom(3).hex()}"
    url = f"{cp.api_url}/work_pools/{settings.work_pool}/queues/{queue}"
    assert api_status(url, cp.auth_string) == 404

    control_plane.ensure_queue(cp, settings, queue)
    control_plane.ensure_queue(cp, settings, queue)

    with get_client(sync_client=True) as client:
        names = [q.name for q in client.read_work_queues(work_pool_name=settings.work_pool)]
    assert names.count(queue) == 1
    # Without fluid's auth string the API answers nothing about it.
    assert api_status(url, None) == 401


def test_a_missing_pool_is_reported_with_how_to_make_it(prefect_stack, settings) -> None:
    other = settings.model_copy(update={"work_pool": "no-such-pool"})

    with pytest.raises(ControlPlaneError, match="no work pool 'no-such-pool'.*fluid server start"):
        control_plane.ensure_queue(prefect_stack, other, "host-anything")


def test_a_hosts_worker_polls_its_queue_and_has_its_janitor_there(prefect_stack, settings):
    me = host_id(settings)

    polled = control_plane.last_polled(prefect_stack, settings, work_queue(me))

    assert polled is not None and datetime.now(UTC) - polled < timedelta(seconds=30)
    with get_client(sync_client=True) as client:
        janitor = client.read_deployment_by_name(f"janitor/{host_deployments.janitor_name(me)}")
    assert janitor.work_queue_name == work_queue(me)
    assert [s.schedule.cron for s in janitor.schedules] == ["*/10 * * * *"]


def test_starting_the_server_upgrades_a_previous_release_store(
    prefect_stack, settings, tmp_path
) -> None:
    old = previous_release("sqlite", tmp_path, "old")
    url = old.url.render_as_string()
    assert schema.revision(old) is None

    # The session's server answers already: start_server finds it, after the store's upgrade.
    control_plane.start_server(settings.model_copy(update={"database_url": url}))

    assert schema.revision(old) == schema.HEAD
