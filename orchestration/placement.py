"""Placement: which host's work queue an agent-task run is submitted to.

As OpenStack's filter scheduler and E2B's orchestrator do it: filter the registered hosts
(ready, worker online by Prefect's worker heartbeats, holding the image by checksum, free
capacity, the labels asked for), then weigh those left (most free capacity, a random pick among
those within one sandbox of the best, so a burst of runs spreads instead of piling onto
whichever host sorts first). A host's load is the larger of its sandboxes and the slots its
placed, unfinished runs will hold, so runs submitted back to back see each other; runs beyond
its room queue on it for sandbox slots. `choose` is
the pure decision; `place` gathers the facts it needs from fluid's store and the Prefect API.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
    WorkQueueFilter,
    WorkQueueFilterName,
)
from prefect.client.schemas.objects import TERMINAL_STATES
from pydantic import BaseModel

from infra.errors import HostNotFound, HostUnavailable
from infra.host.identity import host_id
from infra.records import hosts, image_catalog
from infra.records.hosts import Host
from infra.settings import FluidSettings, get_settings
from orchestration import liveness
from orchestration.limits import SLOTS_PER_RUN

AGENT_TASK_FLOW = "agent-task"
# Hosts whose free capacity is within this many sandboxes of the best count as equals.
NEAR_EQUAL = 1


class HostFacts(BaseModel):
    """What placement knows of one host at the moment it decides."""

    worker_online: bool
    sandboxes: int  # in use now (records on the host not marked lost)
    last_heartbeat: datetime | None = None  # when its worker last sent Prefect a heartbeat
    runs: int = 0  # agent-task runs placed on it and not finished
    # Whether it holds the image asked for, verified by checksum; None: the image is in no
    # cluster catalog (one host building its own), so nothing to check.
    has_image: bool | None = None

    @property
    def load(self) -> int:
        """Sandbox slots taken or promised: a placed run holds SLOTS_PER_RUN once it starts."""
        return max(self.sandboxes, SLOTS_PER_RUN * self.runs)


def why_not(host: Host, facts: HostFacts | None, labels: dict[str, str] | None) -> str | None:
    """Why `host` cannot take a run now, or None when it can."""
    if host.state != "ready":
        return f"{host.state}" + (f" ({host.state_message})" if host.state_message else "")
    if facts is None or not facts.worker_online:
        start = f"`fluid worker start --host {host.id}` on it"
        return f"worker offline ({_heard(facts)}; start it with {start})"
    if facts.has_image is False:
        return "does not hold the image (sync it there: `fluid image sync NAME --from DIR`)"
    # Full by sandboxes that exist, not by runs promised: runs placed on a host beyond its
    # room queue there for sandbox slots (orchestration/limits.py), as on one host alone.
    if facts.sandboxes >= host.max_sandboxes:
        return f"full ({facts.sandboxes} of {host.max_sandboxes} sandboxes in use)"
    missing = {k: v for k, v in (labels or {}).items() if host.labels.get(k) != v}
    if missing:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(missing.items()))
        return f"labels do not match (wanted {wanted})"
    return None


def _heard(facts: HostFacts | None) -> str:
    if facts is None or facts.last_heartbeat is None:
        return "never heard from"
    ago = (datetime.now(UTC) - facts.last_heartbeat).total_seconds()
    return f"last heartbeat {ago:.0f} s ago"


def choose(
    candidates: list[Host],
    facts: dict[str, HostFacts],
    *,
    pinned: str | None = None,
    labels: dict[str, str] | None = None,
    rng: random.Random | None = None,
) -> Host:
    """The host a run goes to: filtered, then weighed; HostUnavailable says why each was not."""
    if pinned is not None:
        chosen = [h for h in candidates if h.id == pinned]
        if not chosen:
            known = ", ".join(h.id for h in candidates) or "none"
            raise HostNotFound(f"no host {pinned!r} is registered (registered: {known})")
        reason = why_not(chosen[0], facts.get(pinned), labels)
        if reason:
            raise HostUnavailable(f"host {pinned} cannot take the run: {reason}")
        return chosen[0]
    if not candidates:
        raise HostUnavailable(
            "no host is registered: start a worker (`fluid worker start`) on each hypervisor host"
        )
    fit: list[Host] = []
    refused: list[str] = []
    for h in candidates:
        reason = why_not(h, facts.get(h.id), labels)
        if reason:
            refused.append(f"  {h.id}: {reason}")
        else:
            fit.append(h)
    if not fit:
        raise HostUnavailable("no host can take the run:\n" + "\n".join(refused))

    def free(h: Host) -> int:
        return h.max_sandboxes - facts[h.id].load

    best = max(free(h) for h in fit)
    equals = sorted((h for h in fit if free(h) >= best - NEAR_EQUAL), key=lambda h: h.id)
    return (rng or random.Random()).choice(equals)


def placed_runs(registered: list[Host], settings: FluidSettings | None = None) -> dict[str, int]:
    """Unfinished agent-task runs in each host's work queue, by host id (its janitor's
    scheduled runs are no load)."""
    settings = settings or get_settings()
    by_queue = {h.work_queue: h.id for h in registered}
    counts = dict.fromkeys(by_queue.values(), 0)
    with get_client(sync_client=True) as client:
        placed = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[AGENT_TASK_FLOW])),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[settings.work_pool])),
            work_queue_filter=WorkQueueFilter(name=WorkQueueFilterName(any_=list(by_queue))),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(not_any_=list(TERMINAL_STATES))  # type: ignore[arg-type]
                )
            ),
        )
    for fr in placed:
        if fr.work_queue_name in by_queue:
            counts[by_queue[fr.work_queue_name]] += 1
    return counts


def image_holders(image: str | None, settings: FluidSettings | None = None) -> set[str] | None:
    """The hosts holding the newest published version of `image`, verified; None when it is
    not published (each host builds its own)."""
    settings = settings or get_settings()
    entry = image_catalog.newest(image or settings.image, settings)
    if entry is None:
        return None
    return set(image_catalog.holders(entry.name, entry.version, settings))


def gather(
    registered: list[Host], image: str | None = None, settings: FluidSettings | None = None
) -> dict[str, HostFacts]:
    """Each host's facts: its worker's liveness, its load, whether it holds the image."""
    settings = settings or get_settings()
    workers = liveness.workers(settings)
    counts = hosts.sandbox_counts(settings)
    runs = placed_runs(registered, settings)
    holders = image_holders(image, settings)
    facts = {}
    for h in registered:
        worker = workers.get(h.id)
        facts[h.id] = HostFacts(
            worker_online=worker is not None and worker.online,
            sandboxes=counts.get(h.id, 0),
            last_heartbeat=worker.last_heartbeat if worker else None,
            runs=runs.get(h.id, 0),
            has_image=None if holders is None else h.id in holders,
        )
    return facts


def place(
    pinned: str | None = None,
    labels: dict[str, str] | None = None,
    image: str | None = None,
    settings: FluidSettings | None = None,
) -> Host:
    """The host a new run should go to, from the hosts table and the workers' queues.

    With no host registered, this host registers itself first: one host alone needs no set-up.
    """
    settings = settings or get_settings()
    registered = hosts.list_hosts(settings)
    if not registered:
        registered = [hosts.add(host_id(settings), settings=settings)]
    facts = gather(registered, image, settings)
    return choose(registered, facts, pinned=pinned, labels=labels)
