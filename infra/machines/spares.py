"""Spare sandboxes: warm sandboxes started ahead of need, handed out by the next create.

A warm start still restores a slot and reseeds its identity while the caller waits (1.5–2 s
here under TCG). A spare went through all of that before anyone asked: it runs in its slot's
`fluid-pool-*` domain with its own id, identity and SSH host key, has run a command over SSH
and has been captured once (the base its taker's first capture builds on). An unnamed
`sandboxes.create` of the default image and network takes one (one database update, so two
processes never take the same spare), gives it its owner, TTL and the host's clock, and
starts a refill in the background (a detached `fill`, logging to <logs>/spares.log).

FLUID_SPARE_SANDBOXES sets how many wait (0: none); there are none without warm slots. Each
holds a slot and its memory while it waits, has a TTL like any sandbox (the janitor reaps it),
and is left out of `fluid sandbox list`; `fluid pool list` shows them and `fluid pool clear`
stops them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import libvirt
from sqlmodel import col, select, update

from infra.errors import FluidError
from infra.host import domains, images
from infra.host.file_locks import FileLock
from infra.host.libvirt_host import connect, lookup
from infra.host.permissions import qemu_dir
from infra.machines import sandbox_records, warm_slots
from infra.machines.owners import Owner
from infra.records import store
from infra.records.hosts import on_this_host
from infra.records.store import SandboxRecord
from infra.settings import FluidSettings, environment, get_settings
from infra.transport import guest_agent

Progress = Callable[[str], None]
# A spare this close to its TTL is not handed out: the janitor may reap it any moment.
MIN_LIFE = timedelta(minutes=5)
# A spare's clock is set again when it is further off than this (it idled, maybe for hours).
CLOCK_SLACK_S = 0.2
# A refill waits this long, and runs niced: the sandbox just taken gets its first commands
# without a restore competing for the host's cores.
REFILL_DELAY_S = 3.0
LOG_MAX_BYTES = 1 << 20  # then spares.log moves to spares.log.1 (one old file kept)
STARTING, WAITING = "starting", "waiting"


def quiet(_msg: str) -> None:
    """The progress callback that says nothing."""


def wanted(settings: FluidSettings) -> int:
    """How many spares this configuration keeps (spares are warm starts: none without slots)."""
    return settings.spare_sandboxes if settings.warm_slots > 0 else 0


def list_spares(
    settings: FluidSettings | None = None, *, state: str | None = None
) -> list[SandboxRecord]:
    """Every spare of this host (or those in `state`), oldest first."""
    settings = settings or get_settings()
    query = select(SandboxRecord).where(
        col(SandboxRecord.spare_state).is_not(None), on_this_host(SandboxRecord, settings)
    )
    if state is not None:
        query = query.where(col(SandboxRecord.spare_state) == state)
    with store.session(settings) as s:
        return list(s.exec(query.order_by(col(SandboxRecord.created_at))))


def fits(
    rec: SandboxRecord, manifest: images.ImageManifest, key: str, network: str, now: datetime
) -> bool:
    """Whether a spare suits a create of `manifest` on `network` with slot key `key`."""
    expires = rec.expires_at if rec.expires_at.tzinfo else rec.expires_at.replace(tzinfo=UTC)
    return (
        (rec.image, rec.image_version, rec.network) == (manifest.name, manifest.version, network)
        and (rec.slot or "").startswith(f"{key}-")
        and expires - now > MIN_LIFE
    )


def take(
    conn: libvirt.virConnect,
    manifest: images.ImageManifest,
    ca_public_line: str,
    *,
    network: str,
    agent_id: str | None,
    ttl_minutes: int,
    owner: Owner | None,
    settings: FluidSettings,
    say: Progress = quiet,
) -> SandboxRecord | None:
    """Hand a waiting spare to a new owner; None when no fitting spare is left."""
    key = warm_slots.slot_key(manifest, ca_public_line, settings)
    now = datetime.now(UTC)
    for rec in list_spares(settings, state=WAITING):
        if not fits(rec, manifest, key, network, now):
            continue
        expires = now + timedelta(minutes=ttl_minutes)
        with store.session(settings) as s:
            taken = s.exec(  # type: ignore[call-overload]
                update(SandboxRecord)
                .where(col(SandboxRecord.id) == rec.id, col(SandboxRecord.spare_state) == WAITING)
                .values(
                    spare_state=None,
                    boot="spare",
                    agent_id=agent_id,
                    created_at=now,
                    expires_at=expires,
                    owner_run=owner.run if owner else None,
                    owner_pid=owner.pid if owner else None,
                    owner_pid_start=owner.pid_start if owner else None,
                )
            ).rowcount
        if taken != 1:
            continue  # another process took it first
        try:
            _hand_over(conn, rec.id, settings)
        except (FluidError, libvirt.libvirtError) as e:
            msg = e.get_error_message() if isinstance(e, libvirt.libvirtError) else str(e)
            say(f"spare {rec.id} is not usable ({msg}): removing it")
            sandbox_records.teardown(conn, rec.id, settings)
            continue
        return sandbox_records.record(rec.id, settings)
    return None


def _hand_over(conn: libvirt.virConnect, sandbox_id: str, settings: FluidSettings) -> None:
    rec = sandbox_records.record(sandbox_id, settings)
    dom = lookup(conn, rec.domain_name)
    if dom is None or not dom.isActive():
        raise FluidError("its VM is not running")
    domains.write_metadata(dom, sandbox_records.domain_metadata(rec, settings))
    # The agent's answer is also the proof that the guest still runs.
    if abs(guest_agent.clock_skew(dom)) > CLOCK_SLACK_S:
        guest_agent.set_clock(dom)


def fill_lock(settings: FluidSettings, *, wait: bool) -> FileLock:
    """One refill at a time per database; `clear` waits for a running one."""
    path = settings.storage_dir / "pool" / f"{settings.store_id}.spares.lock"
    qemu_dir(path.parent, settings.storage_dir)
    return FileLock(path, wait=wait)


def refill_in_background(settings: FluidSettings) -> None:
    """Start a refill in a detached process (its output goes to <logs>/spares.log).

    The fill lock is taken here and handed to the process, so `clear` waits for it even
    before it has started; when a refill is already running, that one will do.
    """
    count = wanted(settings)
    if count == 0:
        return
    with fill_lock(settings, wait=False) as lock:
        if not lock.held:
            return
        _start_filler(count, lock.fileno(), settings)


def _log_file(settings: FluidSettings) -> Path:
    """<logs>/spares.log, moved to spares.log.1 once it passes LOG_MAX_BYTES."""
    path = settings.logs_dir / "spares.log"
    qemu_dir(path.parent, settings.storage_dir)
    if path.exists() and path.stat().st_size > LOG_MAX_BYTES:
        path.replace(path.with_name("spares.log.1"))
    return path


def _start_filler(count: int, fd: int, settings: FluidSettings) -> None:
    with _log_file(settings).open("ab") as log:
        # setsid -f forks and returns at once: the filler is nobody's child to reap.
        subprocess.run(
            [
                "setsid",
                "-f",
                "nice",
                sys.executable,
                "-c",
                # Sleeps before its imports: they too would compete with the caller.
                f"import time; time.sleep({REFILL_DELAY_S}); "
                "import sys, infra.machines.spare_fill as m; "
                f"sys.exit(m.main({count}, lock_fd={fd}))",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
            pass_fds=(fd,),
            # The filler reads its settings from the environment: the caller's, not ours.
            env=environment(settings),
            check=False,
        )


def clear(settings: FluidSettings | None = None) -> list[str]:
    """Stop every spare, after a refill that is running ends; return their ids."""
    settings = settings or get_settings()
    with fill_lock(settings, wait=True) as lock:
        ids = [r.id for r in list_spares(settings)]
        if ids:
            conn = connect(settings)
            try:
                for sid in ids:
                    sandbox_records.teardown(conn, sid, settings)
            finally:
                conn.close()
        # Nothing of a cleared database stays (a filler waiting on this file locks a new one).
        lock.path.unlink(missing_ok=True)
    return ids
