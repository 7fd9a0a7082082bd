"""Named checkpoints of a running sandbox: internal qcow2 snapshots with memory.

libvirt 9.0 reverts only internal snapshots with memory on a running VM, so that is the one
kind fluid uses. A restore brings the guest back exactly, clock included; fluid then sets the
guest clock to the host's.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

import libvirt
from pydantic import BaseModel
from sqlmodel import select

from infra.errors import CheckpointExists, CheckpointNotFound, FluidError, SandboxNotRunning
from infra.host import firewall, images
from infra.host.libvirt_host import connect, lookup
from infra.host.permissions import qemu_dir
from infra.machines import sandbox_records, sandboxes
from infra.names import validate_name
from infra.records import audit, store
from infra.records.store import CheckpointRecord
from infra.settings import FluidSettings, get_settings


class Checkpoint(BaseModel):
    """A checkpoint as users see it."""

    sandbox_id: str
    name: str
    created_at: datetime


def _running_domain(
    conn: libvirt.virConnect, sandbox_id: str, settings: FluidSettings
) -> libvirt.virDomain:
    rec = sandbox_records.record(validate_name(sandbox_id, "sandbox id"), settings)
    dom = lookup(conn, rec.domain_name)
    if dom is None or not dom.isActive():
        raise SandboxNotRunning(f"sandbox {sandbox_id} is not running; start it first")
    return dom


def create(
    sandbox_id: str,
    name: str,
    settings: FluidSettings | None = None,
    *,
    capture: bool = True,
    trusted: bool = False,
    actor: str | None = None,
) -> Checkpoint:
    """Checkpoint a running sandbox's disk and memory under `name`.

    `capture=False` skips the state capture (seconds under TCG): fine for a checkpoint that is
    only ever restored (an agent's own), not for one a change set is computed from. `trusted`:
    only fluid has run in the sandbox yet (see infra.state.capture.capture).
    """
    settings = settings or get_settings()
    validate_name(name, "checkpoint name")
    conn = connect(settings)
    try:
        dom = _running_domain(conn, sandbox_id, settings)
        if name in dom.snapshotListNames():
            raise CheckpointExists(f"sandbox {sandbox_id} already has a checkpoint {name!r}")
        from infra.state import capture as captures

        if capture:
            captures.capture(sandbox_id, checkpoint=name, trusted=trusted, settings=settings)
        # The memory image holds unwritten page cache; flush it so the disk state alone
        # (what a fork boots from) matches what the guest saw.
        sandboxes.run(sandbox_id, "sync", timeout=60, actor="fluid:checkpoint", settings=settings)
        xml = f"<domainsnapshot><name>{escape(name)}</name></domainsnapshot>"
        try:
            dom.snapshotCreateXML(xml, 0)
        except libvirt.libvirtError as e:
            if capture:  # no checkpoint, so no capture of it
                captures.delete(sandbox_id, name, settings)
            raise FluidError(
                f"checkpoint {name} of {sandbox_id} failed: {e.get_error_message()}"
            ) from e
        rec = CheckpointRecord(sandbox_id=sandbox_id, name=name, created_at=datetime.now(UTC))
        with store.session(settings) as s:
            s.add(rec)
        audit.append(
            "checkpoint",
            actor=audit.default_actor(actor),
            summary=f"checkpoint {name}",
            sandbox_id=sandbox_id,
            settings=settings,
        )
        return Checkpoint(sandbox_id=sandbox_id, name=name, created_at=rec.created_at)
    finally:
        conn.close()


def list_checkpoints(sandbox_id: str, settings: FluidSettings | None = None) -> list[Checkpoint]:
    """The sandbox's checkpoints, oldest first."""
    settings = settings or get_settings()
    sandbox_records.record(validate_name(sandbox_id, "sandbox id"), settings)
    with store.session(settings) as s:
        rows = s.exec(
            select(CheckpointRecord)
            .where(CheckpointRecord.sandbox_id == sandbox_id)
            .order_by(CheckpointRecord.id)
        ).all()
    return [Checkpoint(sandbox_id=r.sandbox_id, name=r.name, created_at=r.created_at) for r in rows]


def _snapshot(dom: libvirt.virDomain, sandbox_id: str, name: str) -> libvirt.virDomainSnapshot:
    try:
        return dom.snapshotLookupByName(validate_name(name, "checkpoint name"))
    except libvirt.libvirtError as e:
        raise CheckpointNotFound(
            f"sandbox {sandbox_id} has no checkpoint {name!r}; "
            f"`fluid sandbox checkpoints {sandbox_id}` lists them"
        ) from e


def restore(
    sandbox_id: str, name: str, settings: FluidSettings | None = None, *, actor: str | None = None
) -> None:
    """Return a sandbox to a checkpoint, then correct its clock so commands work at once."""
    settings = settings or get_settings()
    conn = connect(settings)
    try:
        rec = sandbox_records.record(validate_name(sandbox_id, "sandbox id"), settings)
        dom = lookup(conn, rec.domain_name)
        if dom is None:
            raise SandboxNotRunning(f"sandbox {sandbox_id} has no VM")
        snap = _snapshot(dom, sandbox_id, name)
        taken = _taken_at(sandbox_id, name, settings)
        # Reverting with RUNNING starts QEMU when the sandbox is stopped.
        firewall.ensure_guard(settings)
        dom.revertToSnapshot(snap, libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING)
        audit.append(
            "restore",
            actor=audit.default_actor(actor),
            summary=f"restore {name}",
            sandbox_id=sandbox_id,
            settings=settings,
        )
    finally:
        conn.close()
    # The guest resumes with the clock it had at the checkpoint (it has no NTP), so the
    # certificate that sets the clock must already be valid back then.
    deadline = time.monotonic() + 60
    while True:
        try:
            sandboxes.run(
                sandbox_id,
                f"date -u -s @{time.time():.3f} >/dev/null",
                timeout=20,
                actor="fluid:restore",
                valid_since=taken,
                settings=settings,
            )
            return
        except FluidError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _taken_at(sandbox_id: str, name: str, settings: FluidSettings) -> datetime | None:
    with store.session(settings) as s:
        rec = s.exec(
            select(CheckpointRecord).where(
                CheckpointRecord.sandbox_id == sandbox_id, CheckpointRecord.name == name
            )
        ).first()
    return rec.created_at if rec else None


def delete(sandbox_id: str, name: str, settings: FluidSettings | None = None) -> None:
    """Delete one checkpoint."""
    settings = settings or get_settings()
    conn = connect(settings)
    try:
        rec = sandbox_records.record(validate_name(sandbox_id, "sandbox id"), settings)
        dom = lookup(conn, rec.domain_name)
        if dom is None:
            raise SandboxNotRunning(f"sandbox {sandbox_id} has no VM")
        _snapshot(dom, sandbox_id, name).delete(0)
        from infra.state import capture

        capture.delete(sandbox_id, name, settings)
        with store.session(settings) as s:
            row = s.exec(
                select(CheckpointRecord).where(
                    CheckpointRecord.sandbox_id == sandbox_id, CheckpointRecord.name == name
                )
            ).first()
            if row:
                s.delete(row)
    finally:
        conn.close()


def fork(
    sandbox_id: str,
    checkpoint: str,
    name: str | None = None,
    *,
    settings: FluidSettings | None = None,
    progress=None,
) -> sandboxes.Sandbox:
    """A new sandbox booted from the disk state of another sandbox's checkpoint.

    The fork gets its own identity (host key, machine-id, hostname) at its first boot.
    """
    settings = settings or get_settings()
    new_id = (
        validate_name(name, "sandbox name")
        if name is not None
        else sandbox_records.new_id(settings)
    )
    src = sandbox_records.record(validate_name(sandbox_id, "sandbox id"), settings)
    conn = connect(settings)
    try:
        dom = lookup(conn, src.domain_name)
        if dom is None:
            raise SandboxNotRunning(f"sandbox {sandbox_id} has no VM")
        _snapshot(dom, sandbox_id, checkpoint)
    finally:
        conn.close()
    manifest = images.resolve(src.image, src.image_version, settings)
    qemu_dir(settings.disks_dir, settings.storage_dir)
    # Named after the new sandbox so its teardown removes a half-made copy too.
    tmp = settings.disks_dir / f"{new_id}.fork.qcow2"
    # -U: the source VM holds the image lock; the snapshot's clusters are immutable, so a
    # shared read is safe. -B: only what differs from the golden image is copied.
    r = subprocess.run(
        [
            "qemu-img",
            "convert",
            "-U",
            "-l",
            f"snapshot.name={checkpoint}",
            "-O",
            "qcow2",
            "-B",
            str(manifest.disk_path),
            "-F",
            "qcow2",
            src.disk_path,
            str(tmp),
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise FluidError(f"cannot copy checkpoint {checkpoint} of {sandbox_id}: {r.stderr}")
    try:
        return sandboxes.create(
            new_id,
            image=src.image,
            image_version=src.image_version,
            network=src.network,
            agent_id=src.agent_id,
            base_disk=Path(tmp),
            parent=(sandbox_id, checkpoint),
            settings=settings,
            progress=progress,
        )
    finally:
        tmp.unlink(missing_ok=True)
