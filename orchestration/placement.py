"""Placement: which host's work queue an agent-task run is submitted to.

As OpenStack's filter scheduler and E2B's orchestrator do it: filter the registered hosts
(ready, worker online, free capacity, the labels asked for), then weigh those left (most free
capacity, a random pick among those within one sandbox of the best, so a burst of runs spreads
instead of piling onto whichever host sorts first). `choose` is the pure decision; `place`
gathers the facts it needs from fluid's store and the Prefect API.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import get_client
from pydantic import BaseModel

from infra.errors import HostNotFound, HostUnavailable
from infra.host.identity import host_id
from infra.records import hosts
from infra.records.hosts import Host
from infra.settings import FluidSettings, get_settings

# A worker polls its queue every few seconds (PREFECT_WORKER_QUERY_SECONDS); a queue not
# polled for this long has no live worker (Prefect's own foreman uses the same 60 s).
WORKER_SILENCE = timedelta(seconds=60)
# Hosts whose free capacity is within this many sandboxes of the best count as equals.
NEAR_EQUAL = 1


class HostFacts(BaseModel):
    """What placement knows of one host at the moment it decides."""

    worker_online: bool
    sandboxes: int  # in use now (records on the host not marked lost)
    last_polled: datetime | None = None  # when its worker last asked its queue for work


def why_not(host: Host, facts: HostFacts | None, labels: dict[str, str] | None) -> str | None:
    """Why `host` cannot take a run now, or None when it can."""
    if host.state != "ready":
        return f"{host.state}" + (f" ({host.state_message})" if host.state_message else "")
    if facts is None or not facts.worker_online:
        start = f"`fluid worker start --host {host.id}` on it"
        return f"worker offline ({_polled(facts)}; start it with {start})"
    if facts.sandboxes >= host.max_sandboxes:
        return f"full ({facts.sandboxes} of {host.max_sandboxes} sandboxes in use)"
    missing = {k: v for k, v in (labels or {}).items() if host.labels.get(k) != v}
    if missing:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(missing.items()))
        return f"labels do not match (wanted {wanted})"
    return None


def _polled(facts: HostFacts | None) -> str:
    if facts is None or facts.last_polled is None:
        return "its queue was never polled"
    ago = (datetime.now(UTC) - facts.last_polled).total_seconds()
    return f"its queue was last polled {ago:.0f} s ago"


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
        return h.max_sandboxes - facts[h.id].sandboxes

    best = max(free(h) for h in fit)
    equals = sorted((h for h in fit if free(h) >= best - NEAR_EQUAL), key=lambda h: h.id)
    return (rng or random.Random()).choice(equals)


def queue_polls(settings: FluidSettings | None = None) -> dict[str, datetime | None]:
    """When each work queue of fluid's pool was last polled by a worker (None: never, or the
    queue is paused), by queue name."""
    settings = settings or get_settings()
    with get_client(sync_client=True) as client:
        queues = client.read_work_queues(work_pool_name=settings.work_pool)
    return {q.name: (None if q.is_paused else q.last_polled) for q in queues}


def gather(registered: list[Host], settings: FluidSettings | None = None) -> dict[str, HostFacts]:
    """Each host's facts: whether its worker polled its queue lately, sandboxes in use."""
    settings = settings or get_settings()
    polls = queue_polls(settings)
    counts = hosts.sandbox_counts(settings)
    now = datetime.now(UTC)
    facts = {}
    for h in registered:
        polled = polls.get(h.work_queue)
        facts[h.id] = HostFacts(
            worker_online=polled is not None and now - polled <= WORKER_SILENCE,
            sandboxes=counts.get(h.id, 0),
            last_polled=polled,
        )
    return facts


def place(
    pinned: str | None = None,
    labels: dict[str, str] | None = None,
    settings: FluidSettings | None = None,
) -> Host:
    """The host a new run should go to, from the hosts table and the workers' queues.

    With no host registered, this host registers itself first: one host alone needs no set-up.
    """
    settings = settings or get_settings()
    registered = hosts.list_hosts(settings)
    if not registered:
        registered = [hosts.add(host_id(settings), settings=settings)]
    return choose(registered, gather(registered, settings), pinned=pinned, labels=labels)
