"""Reaping what no one will remove: expired sandboxes, sandboxes of ended or dead runs, orphans,
and pruning what nothing references: captures of gone sandboxes, blobs, stale hash indexes.

Touches only domains whose fluid metadata says kind=sandbox, or kind=pool for a warm slot's
abandoned preparation (never production VMs or anything fluid did not make). Whether a flow
run has ended is asked through a callback, so this module needs no Prefect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel
from sqlmodel import select

from infra.host import domains, images
from infra.host.identity import host_id
from infra.host.libvirt_host import connect, remove_domain
from infra.machines import sandbox_records, warm_slots
from infra.machines.owners import Owner
from infra.records import store
from infra.records.hosts import on_this_host
from infra.records.store import SandboxRecord
from infra.settings import FluidSettings, get_settings
from infra.state import capture as captures
from infra.state.capture import Pruned

RunPhase = Literal["active", "waiting", "ended", "missing"]
# Seconds an orphan must have existed before it is reaped: a sandbox being created has a
# disk before its record and a record before its domain.
DEFAULT_GRACE_S = 600


class Reaped(BaseModel):
    """One thing the janitor removed, and why."""

    sandbox_id: str
    reason: str
    owner_run: str | None = None
    owner_dead: bool = False


class JanitorReport(BaseModel):
    """What a sweep removed, what it kept and what went wrong."""

    reaped: list[Reaped] = []
    kept: list[str] = []
    errors: list[str] = []
    pruned: list[Pruned] = []


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def sweep(
    run_phase: Callable[[str], RunPhase] | None = None,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    settings: FluidSettings | None = None,
) -> JanitorReport:
    """Remove every sandbox no one will come back for; `run_phase` tells a run's phase."""
    settings = settings or get_settings()
    now = datetime.now(UTC)
    me = host_id(settings)
    report = JanitorReport()
    conn = connect(settings)
    try:
        with store.session(settings) as s:
            # Only this host's: another host's sandboxes, processes and VMs are not visible here,
            # so their owners would look dead and their VMs missing.
            mine = select(SandboxRecord).where(on_this_host(SandboxRecord, settings))
            records = list(s.exec(mine))
        # One pass over libvirt: each domain's metadata is an API call of its own.
        metas = {meta.id: meta for _dom, meta in domains.fluid_domains(conn, "sandbox")}

        def reap(sid: str, reason: str, rec: SandboxRecord | None = None, dead=False) -> None:
            try:
                sandbox_records.teardown(conn, sid, settings)
                report.reaped.append(
                    Reaped(
                        sandbox_id=sid,
                        reason=reason,
                        owner_run=rec.owner_run if rec else None,
                        owner_dead=dead,
                    )
                )
            except Exception as e:  # one stuck sandbox must not stop the sweep
                report.errors.append(f"{sid}: {type(e).__name__}: {e}")

        for rec in records:
            age = (now - _aware(rec.created_at)).total_seconds()
            if rec.lost:
                reap(rec.id, f"lost while this host was down ({rec.lost})", rec)
                continue
            if _aware(rec.expires_at) < now:
                reap(rec.id, f"past its TTL (expired {rec.expires_at:%Y-%m-%d %H:%M} UTC)", rec)
                continue
            if rec.owner_run and run_phase is not None:
                try:
                    phase = run_phase(rec.owner_run)
                except Exception as e:
                    report.errors.append(f"run {rec.owner_run}: {type(e).__name__}: {e}")
                    phase = "active"
                if phase in ("ended", "missing"):
                    reap(rec.id, f"its flow run {rec.owner_run} has ended", rec)
                    continue
                owner = Owner(run=rec.owner_run, pid=rec.owner_pid, pid_start=rec.owner_pid_start)
                if phase == "active" and owner.process_alive() is False:
                    reap(
                        rec.id,
                        f"the process (pid {rec.owner_pid}) of its run {rec.owner_run} is gone",
                        rec,
                        dead=True,
                    )
                    continue
            if rec.id not in metas and age > grace_s:
                reap(rec.id, "a record without a VM", rec)
                continue
            report.kept.append(rec.id)

        known = {r.id for r in records}
        for sid, meta in metas.items():
            if not meta.is_of(settings.store_id, me):
                continue  # another database's or host's sandbox (or one from before either)
            if sid not in known and (now - _aware(meta.created_at)).total_seconds() > grace_s:
                reap(sid, "a VM without a record")

        # A slot preparation whose process died leaves its one-off boot running.
        for dom, meta in domains.fluid_domains(conn, "pool"):
            age = (now - _aware(meta.created_at)).total_seconds()
            if not meta.is_of(settings.store_id, me) or age <= grace_s:
                continue
            if warm_slots.being_prepared(meta.id, settings):
                continue
            try:
                remove_domain(conn, dom.name())
                warm_slots.discard(meta.id, settings)
                report.reaped.append(
                    Reaped(sandbox_id=meta.id, reason="an abandoned warm-slot preparation")
                )
            except Exception as e:
                report.errors.append(f"slot {meta.id}: {type(e).__name__}: {e}")

        if settings.disks_dir.is_dir():
            for disk in settings.disks_dir.glob("*.qcow2"):
                sid = disk.name.split(".")[0]
                # A disk whose VM exists belongs to that VM's database, whichever it is.
                if sid in known or sid in metas:
                    continue
                if time.time() - disk.stat().st_mtime > grace_s:
                    reap(sid, f"a disk without a record ({disk.name})")
    finally:
        conn.close()
    try:
        with store.session(settings) as s:
            # Every host's sandboxes: the blob store may be shared, and their blobs are in use.
            kept = {r.id for r in s.exec(select(SandboxRecord))}
        versions = {(m.name, m.version) for m in images.list_images(settings)}
        report.pruned = captures.prune(kept, versions, grace_s=grace_s, settings=settings)
    except Exception as e:  # pruning waits for the next sweep; the reaping is done
        report.errors.append(f"pruning: {type(e).__name__}: {e}")
    return report
