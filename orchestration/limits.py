"""Sandboxes per host: a Prefect global concurrency limit that agent-task runs hold.

Each host that runs flows has its own limit, `fluid-sandboxes-<host id>` (one Prefect server
serves the workers of several hosts; the id is FLUID_HOST_ID or the one kept in FLUID_HOME,
infra/host/identity.py, not the hostname, which containers and clones share), of
FLUID_MAX_SANDBOXES slots as the flow process sees it (the worker's environment). Every run
creates or resizes it before taking slots, so the limit exists with the host's value whenever
a flow runs, however the run was started.

Slots are held under a lease the run renews from a thread (Prefect's `concurrency`). A run
whose process dies stops renewing; its lease expires after LEASE_S and the server frees the
slots. A run suspended for approval has no process and holds no slots.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from infra.errors import FluidError
from infra.host.identity import host_id
from infra.settings import FluidSettings, get_settings

# A run's own sandbox plus, while it proves its playbook, the replay sandbox. Taken together
# up front: runs holding one slot each could otherwise all wait for their second one forever.
SLOTS_PER_RUN = 2
# The server's minimum lease; renewed every 45 s, so a dead run's slots free within a minute.
LEASE_S = 60.0
# Acquiring takes well under a second when a slot is free; longer means the run queues.
WAIT_NOTICE_S = 3.0


class SandboxLimitError(FluidError):
    """This host's sandbox limit could not be set or its slots could not be taken."""


def host_name(settings: FluidSettings | None = None) -> str:
    """This host's id, as it appears in its limit's name."""
    return host_id(settings)


def limit_name(host: str | None = None) -> str:
    """The name of `host`'s (default: this host's) sandbox limit."""
    return f"fluid-sandboxes-{host or host_name()}"


def read_limit(name: str | None = None) -> GlobalConcurrencyLimitResponse | None:
    """The limit as the server holds it (size, slots in use), or None if it does not exist."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name or limit_name())
        except ObjectNotFound:
            return None


def ensure_limit(settings: FluidSettings | None = None) -> GlobalConcurrencyLimitResponse:
    """Create this host's limit, or resize it, to FLUID_MAX_SANDBOXES; the limit as stored."""
    settings = settings or get_settings()
    name, size = limit_name(host_name(settings)), settings.max_sandboxes
    try:
        with get_client(sync_client=True) as client:
            try:
                current = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                # Runs starting together race to create it; the losers find it made.
                with contextlib.suppress(ObjectAlreadyExists):
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=size)
                    )
                current = client.read_global_concurrency_limit_by_name(name)
            if current.limit != size:
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=size)
                )
                current = client.read_global_concurrency_limit_by_name(name)
            return current
    except (httpx.HTTPError, ObjectNotFound) as e:
        raise SandboxLimitError(
            f"could not set the concurrency limit {name!r} to {size} on the Prefect server "
            f"({e}); check that the server answers (`fluid server status`)"
        ) from e


@contextlib.contextmanager
def sandbox_slots(
    run_id: str,
    say: Callable[[str], None],
    settings: FluidSettings | None = None,
) -> Iterator[GlobalConcurrencyLimitResponse]:
    """Hold SLOTS_PER_RUN slots of this host's limit for the body; wait, saying so, when full."""
    limit = ensure_limit(settings)
    host = host_name(settings)
    got = threading.Event()
    waited: list[float] = []

    def announce() -> None:
        # Prefect retries a refused acquisition quietly; tell the user why the run stands still.
        if got.wait(WAIT_NOTICE_S):
            return
        waited.append(time.monotonic())
        now = read_limit(limit.name) or limit
        say(f"waiting for a sandbox slot: {now.active_slots} of {now.limit} in use on {host}")

    ctx = contextvars.copy_context()  # the run's Prefect settings and logging context
    threading.Thread(target=ctx.run, args=(announce,), daemon=True).start()
    started = time.monotonic()
    with contextlib.ExitStack() as held:
        try:
            # strict: the limit was just made, so a missing one is an error, not "no limit".
            # A failed lease renewal only warns: killing an agent mid-task is worse than
            # briefly running over the limit.
            held.enter_context(
                concurrency(
                    limit.name,
                    occupy=SLOTS_PER_RUN,
                    lease_duration=LEASE_S,
                    strict=True,
                    holder=ConcurrencyLeaseHolder(type="flow_run", id=UUID(run_id)),
                    raise_on_lease_renewal_failure=False,
                )
            )
        except ConcurrencySlotAcquisitionError as e:
            raise SandboxLimitError(
                f"could not take {SLOTS_PER_RUN} slots of the concurrency limit {limit.name!r}: {e}"
            ) from e
        finally:
            got.set()
        if waited:
            say(f"got a sandbox slot on {host} after {time.monotonic() - started:.0f} s")
        say(f"holding {SLOTS_PER_RUN} sandbox slots of {limit.limit} on {host} ({limit.name})")
        yield limit
