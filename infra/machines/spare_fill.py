"""Filling the spares: starting warm sandboxes ahead of need until enough wait.

`fluid pool fill` runs it in the foreground; after a create takes a spare, a detached process
runs `main` (see `spares.refill_in_background`). It builds on `sandboxes.create`, which itself
takes spares (infra/machines/spares.py), so the two halves live apart.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from infra.errors import FluidError
from infra.host import images
from infra.host.libvirt_host import connect, lookup
from infra.machines import lifecycle, sandbox_records, sandboxes, spares, warm_slots
from infra.records import store
from infra.settings import FluidSettings, get_settings
from infra.transport import guest_agent, ssh
from infra.transport.ssh_ca import authority

Progress = Callable[[str], None]


def fill(
    count: int | None = None, settings: FluidSettings | None = None, say: Progress = spares.quiet
) -> list[str]:
    """Start spares until `count` (default: the setting) wait; return the ids started.

    Spares that no longer fit (another image version, settings or CA; near their TTL) are
    stopped first. Returns at once when another process is filling.
    """
    settings = settings or get_settings()
    with spares.fill_lock(settings, wait=False) as lock:
        if not lock.held:
            say("another process is starting spares")
            return []
        return _fill(spares.wanted(settings) if count is None else count, settings, say)


def _fill(count: int, settings: FluidSettings, say: Progress) -> list[str]:
    started: list[str] = []
    manifest = images.resolve(settings.image, None, settings)
    ca = authority(settings)
    key = warm_slots.slot_key(manifest, ca.public_key_line(), settings)
    conn = connect(settings)
    try:
        now = datetime.now(UTC)
        for rec in spares.list_spares(settings):
            if rec.spare_state == spares.STARTING:
                # Only a filler starts spares, and this one holds the lock: it was killed.
                say(f"spare {rec.id} was left half started: stopping it")
                sandbox_records.teardown(conn, rec.id, settings)
            elif not spares.fits(rec, manifest, key, settings.network, now):
                say(f"spare {rec.id} no longer fits these settings or image: stopping it")
                sandbox_records.teardown(conn, rec.id, settings)
        # Counted again before each start: creates keep taking spares while this runs.
        while len(spares.list_spares(settings, state=spares.WAITING)) < count:
            try:
                box = sandboxes.create(spare=True, progress=say, settings=settings)
            except FluidError as e:
                say(f"no spare started: {e}")
                break
            rec = sandbox_records.record(box.id, settings)
            creds = ca.issue(lifecycle.principal(box.id), timedelta(minutes=2))
            # A first command proves it and leaves sshd's code translated for the taker.
            if not ssh.ping("127.0.0.1", box.ssh_port, creds, rec.host_key or ""):
                say(f"spare {box.id} did not run a command over SSH: stopping it")
                sandbox_records.teardown(conn, box.id, settings)
                break
            _take_base_capture(box.id, settings, say)
            dom = lookup(conn, rec.domain_name)
            if dom is not None:  # a restore leaves the clock a little behind: put it right now
                guest_agent.set_clock(dom)
            with store.session(settings) as s:
                rec.spare_state = spares.WAITING
                s.merge(rec)
            say(f"spare {box.id} is waiting")
            started.append(box.id)
    finally:
        conn.close()
    return started


def _take_base_capture(spare_id: str, settings: FluidSettings, say: Progress) -> None:
    """Capture a spare while only fluid has run in it: the taker's first capture lists only
    what changed since (its files from the journal this capture starts)."""
    from infra.state import capture  # the refill process only: `fluid` commands stay quick

    try:
        capture.capture(spare_id, trusted=True, settings=settings)
    except FluidError as e:
        say(f"spare {spare_id} has no base capture ({e}): its first capture will list every file")


def main(count: int, *, lock_fd: int) -> int:
    """The background refill, holding the fill lock on `lock_fd` (inherited) until it exits."""

    def say(msg: str) -> None:
        print(f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} {msg}", flush=True)

    del lock_fd  # nothing to do with it: it stays open, and the lock held, until exit
    try:
        _fill(count, get_settings(), say)
    except FluidError as e:
        say(f"refill failed: {e}")
        return 1
    return 0
