"""Which fluid hosts are alive, by Prefect's worker heartbeats.

Each host's worker is named `fluid-<host id>` (orchestration/control_plane.py) and sends a
heartbeat every control_plane.WORKER_HEARTBEAT_S; Prefect reports a worker OFFLINE once three
heartbeats are missed. Placement skips a host whose worker is offline, and the cluster janitor
(flows/janitor.py) marks it down.
"""

from __future__ import annotations

from datetime import datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import WorkerStatus
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from infra.settings import FluidSettings, get_settings
from orchestration.control_plane import WORKER_PREFIX


class WorkerLiveness(BaseModel):
    """A host's worker as Prefect last heard from it."""

    host: str
    online: bool
    last_heartbeat: datetime | None = None


def workers(settings: FluidSettings | None = None) -> dict[str, WorkerLiveness]:
    """Every fluid host's worker in fluid's pool (host id → liveness); a host whose worker
    never started has none."""
    settings = settings or get_settings()
    with get_client(sync_client=True) as client:
        try:
            found = client.read_workers_for_work_pool(settings.work_pool)
        except ObjectNotFound:
            return {}
    live = {}
    for w in found:
        if not w.name.startswith(WORKER_PREFIX):
            continue
        host = w.name.removeprefix(WORKER_PREFIX)
        live[host] = WorkerLiveness(
            host=host,
            online=w.status == WorkerStatus.ONLINE,
            last_heartbeat=w.last_heartbeat_time,
        )
    return live
