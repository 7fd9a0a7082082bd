"""The control plane's per-host parts that need no Prefect server: each host's work queue is
made in fluid's pool when missing (with the API's auth string), a missing pool is reported
with how to make it, each host's worker has its own pid file and log, and a server named by
PREFECT_API_URL is the one a worker works for.

The Prefect API is stood in for by a small HTTP server that answers the two calls used.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr

from infra.settings import FluidSettings
from orchestration import control_plane
from orchestration.control_plane import ControlPlane, ControlPlaneError

AUTH = "s3cret"


class FakeApi:
    """Work pools and their queues, and every request as (method, path, authorization)."""

    def __init__(self) -> None:
        self.queues: dict[str, set[str]] = {"fluid": {"default"}}
        self.requests: list[tuple[str, str, str | None]] = []
        self.polled: dict[str, str] = {}


@pytest.fixture
def api() -> Iterator[tuple[FakeApi, ControlPlane]]:
    state = FakeApi()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def answer(self, code: int, body: dict | None = None) -> None:
            data = json.dumps(body or {}).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            state.requests.append(("GET", self.path, self.headers.get("Authorization")))
            _, _, _, pool, _, queue = self.path.split("/")
            if queue not in state.queues.get(pool, set()):
                return self.answer(404)
            self.answer(200, {"name": queue, "last_polled": state.polled.get(queue)})

        def do_POST(self) -> None:
            state.requests.append(("POST", self.path, self.headers.get("Authorization")))
            pool = self.path.split("/")[3]
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if pool not in state.queues:
                return self.answer(404)
            state.queues[pool].add(body["name"])
            self.answer(201)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield state, ControlPlane(api_url=f"{base}/api", ui_url=base, auth_string=SecretStr(AUTH))
    srv.shutdown()


def settings_at(tmp_path: Path, **kw: object) -> FluidSettings:
    return FluidSettings(home=tmp_path / "home", host_id="hv-1", **kw)


def test_a_missing_host_queue_is_made_once_in_fluids_pool_with_the_auth_string(api, tmp_path):
    state, cp = api
    settings = settings_at(tmp_path)

    control_plane.ensure_queue(cp, settings, "host-hv-1")
    control_plane.ensure_queue(cp, settings, "host-hv-1")

    assert state.queues["fluid"] == {"default", "host-hv-1"}
    assert [m for m, _, _ in state.requests].count("POST") == 1
    token = "Basic " + base64.b64encode(AUTH.encode()).decode()
    assert {a for _, _, a in state.requests} == {token}


def test_a_missing_pool_is_reported_with_how_to_make_it(api, tmp_path):
    _, cp = api

    with pytest.raises(ControlPlaneError, match="no work pool 'other'.*fluid server start"):
        control_plane.ensure_queue(cp, settings_at(tmp_path, work_pool="other"), "host-hv-1")


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


def test_when_a_queue_was_last_polled_is_read_from_the_api(api, tmp_path):
    state, cp = api
    settings = settings_at(tmp_path)
    control_plane.ensure_queue(cp, settings, "host-hv-1")
    assert control_plane.last_polled(cp, settings, "host-hv-1") is None

    state.polled["host-hv-1"] = "2026-12-05T16:14:10.447180Z"

    polled = control_plane.last_polled(cp, settings, "host-hv-1")
    assert polled == datetime(2026, 12, 5, 16, 14, 10, 447180, tzinfo=UTC)
    assert control_plane.last_polled(cp, settings, "host-nowhere") is None
