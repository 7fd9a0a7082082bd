"""Sandbox VMs: linked clones of a golden image, reached over SSH on a 127.0.0.1 forward."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Unpack

import libvirt
from pydantic import BaseModel
from sqlmodel import select

from infra.errors import (
    FluidError,
    SandboxExists,
    SandboxNotFound,
    SandboxNotReady,
    SandboxNotRunning,
    WarmStartFailed,
)
from infra.host import domains, firewall, images, ports
from infra.host.identity import host_id
from infra.host.libvirt_host import connection, domain_state, lookup, remove_domain
from infra.host.permissions import private_dir, qemu_dir
from infra.machines import lifecycle, spares, warm_slots
from infra.machines.owners import Owner
from infra.machines.sandbox_records import (
    domain_metadata,
    domain_name,
    new_id,
    record,
    teardown,
)
from infra.names import validate_name
from infra.records import store
from infra.records.hosts import on_this_host
from infra.records.store import CommandRecord, SandboxRecord
from infra.settings import FluidSettings, get_settings
from infra.transport import ssh
from infra.transport.ssh_ca import CertificateAuthority, authority

Progress = Callable[[str], None]


class Sandbox(BaseModel):
    """A sandbox as users see it."""

    id: str
    domain_name: str
    state: Literal["running", "paused", "shut off", "missing"]
    image: str
    image_version: str
    network: str
    ssh_port: int
    agent_id: str | None
    created_at: datetime
    expires_at: datetime
    parent_id: str | None = None
    parent_checkpoint: str | None = None
    boot: Literal["warm", "cold", "spare"] = "cold"


class SandboxListing(BaseModel):
    """Sandboxes reconciled with libvirt: records, and orphans in either direction."""

    sandboxes: list[Sandbox]
    orphan_domains: list[str] = []
    orphan_records: list[str] = []
    orphan_disks: list[str] = []


def _say(_msg: str) -> None:
    pass


# How the VM lifecycle names a sandbox, and its errors: missing, not ready, not running.
SANDBOX = lifecycle.Kind(
    "sandbox", "fluid sandbox", (SandboxNotFound, SandboxNotReady, SandboxNotRunning)
)


def machine(rec: SandboxRecord) -> lifecycle.Machine:
    """A sandbox as the VM lifecycle sees it."""
    return lifecycle.Machine.of(rec, SANDBOX, name=rec.id, instance_id=rec.id)


def _view(rec: SandboxRecord, state: str) -> Sandbox:
    return Sandbox(
        state=state,
        boot=rec.boot or "cold",
        **rec.model_dump(include=set(Sandbox.model_fields) - {"state", "boot"}),
    )


def create(
    name: str | None = None,
    *,
    image: str | None = None,
    image_version: str | None = None,
    network: str | None = None,
    agent_id: str | None = None,
    ttl_minutes: int | None = None,
    base_disk: Path | None = None,
    parent: tuple[str, str] | None = None,
    owner: Owner | None = None,
    progress: Progress | None = None,
    settings: FluidSettings | None = None,
    spare: bool = False,
) -> Sandbox:
    """Create a sandbox and wait until SSH answers; on any failure nothing is left behind.

    `base_disk` replaces the fresh overlay with a prepared disk (used by fork); `owner` names
    the flow run (and process) it works for, so the janitor can reap it when they are gone.
    An unnamed sandbox of the default image takes a waiting spare when there is one
    (infra/machines/spares.py); `spare` starts such a spare (warm only).
    """
    settings = settings or get_settings()
    say = progress or _say
    sandbox_id = validate_name(name, "sandbox name") if name is not None else new_id(settings)
    network = network or settings.network
    if network not in ("nat", "isolated"):
        raise FluidError(f"unknown network mode {network!r}: use nat or isolated")
    with connection(settings) as conn:
        with store.session(settings) as s:
            if s.get(SandboxRecord, sandbox_id) or lookup(conn, domain_name(sandbox_id)):
                raise SandboxExists(f"sandbox {sandbox_id!r} already exists; pick another name")
        manifest = lifecycle.golden_image(image, image_version, settings, say)
        # Before a spare is handed over too: it runs already, and the guard may have gone.
        firewall.ensure_guard(settings)
        ca = authority(settings)
        refill = not spare and spares.wanted(settings) > 0
        if refill and name is None and base_disk is None and parent is None:
            taken = spares.take(
                conn,
                manifest,
                ca.public_key_line(),
                network=network,
                agent_id=agent_id,
                ttl_minutes=ttl_minutes or settings.sandbox_ttl_minutes,
                owner=owner,
                settings=settings,
                say=say,
            )
            if taken is not None:
                say(f"sandbox {taken.id}: taken from the spares (started ahead, warm)")
                spares.refill_in_background(settings)
                return _view(taken, domain_state(lookup(conn, taken.domain_name)))
        # QEMU opens images and disks by path: its group may enter these, nobody else
        # (guests' disks and console logs); the build cache is root's alone.
        for d in (settings.images_dir, settings.disks_dir, settings.logs_dir):
            qemu_dir(d, settings.storage_dir)
        private_dir(settings.cache_dir)
        now = datetime.now(UTC)
        disk = settings.disks_dir / f"{sandbox_id}.qcow2"
        console = settings.logs_dir / f"{sandbox_id}.console.log"
        rec = SandboxRecord(
            id=sandbox_id,
            host_id=host_id(settings),
            domain_name=domain_name(sandbox_id),
            image=manifest.name,
            image_version=manifest.version,
            agent_id=agent_id,
            network=network,
            ssh_port=0,
            disk_path=str(disk),
            console_log=str(console),
            created_at=now,
            expires_at=now + timedelta(minutes=ttl_minutes or settings.sandbox_ttl_minutes),
            parent_id=parent[0] if parent else None,
            parent_checkpoint=parent[1] if parent else None,
            owner_run=owner.run if owner else None,
            owner_pid=owner.pid if owner else None,
            owner_pid_start=owner.pid_start if owner else None,
            spare_state="starting" if spare else None,
        )
        try:
            _provision(conn, rec, manifest, ca, base_disk, settings, say)
        except BaseException:
            teardown(conn, sandbox_id, settings)
            raise
        if refill:
            spares.refill_in_background(settings)
        return _view(rec, domain_state(lookup(conn, rec.domain_name)))


def _provision(
    conn: libvirt.virConnect,
    rec: SandboxRecord,
    manifest: images.ImageManifest,
    ca: CertificateAuthority,
    base_disk: Path | None,
    settings: FluidSettings,
    say: Progress,
) -> None:
    """Start the sandbox warm (restored from a slot) when it can, else cold; wait for SSH."""
    start = time.monotonic()
    lock: warm_slots.PreparationLock | None = None
    with ports.allocation_lock(settings.storage_dir):
        rec.ssh_port = ports.pick(settings.port_range, ports.reserved(conn, settings))
        if base_disk is not None:
            claim = warm_slots.Claim(reason="a fork boots from its checkpoint's disk")
        else:
            claim = warm_slots.claim(conn, manifest, ca.public_key_line(), settings)
        if claim.slot is None and rec.spare_state:
            raise WarmStartFailed(f"a spare starts only warm: {claim.reason}")
        if claim.slot is not None:
            rec.slot, rec.domain_name = claim.slot.name, claim.slot.domain_name
            if not claim.slot.prepared:
                lock = warm_slots.PreparationLock(claim.slot.name, settings)
        # The record holds the port and the slot once the lock is released.
        with store.session(settings) as s:
            s.add(rec)
    if claim.slot is not None:
        try:
            _warm_start(conn, rec, claim.slot, manifest, ca, lock, settings, say)
            say(f"sandbox {rec.id}: ready in {time.monotonic() - start:.1f} s (warm start)")
            return
        except WarmStartFailed as e:
            if rec.spare_state:
                raise
            claim.reason = str(e)
            remove_domain(conn, claim.slot.domain_name)
            Path(rec.disk_path).unlink(missing_ok=True)
            warm_slots.discard(claim.slot.name, settings)  # a slot that failed once is suspect
            rec.slot, rec.domain_name = None, domain_name(rec.id)
            with store.session(settings) as s:
                s.merge(rec)
    say(f"sandbox {rec.id}: cold boot ({claim.reason})")
    _cold_boot(conn, rec, manifest, ca, base_disk, settings, say)
    say(f"sandbox {rec.id}: ready in {time.monotonic() - start:.1f} s")


def _warm_start(
    conn: libvirt.virConnect,
    rec: SandboxRecord,
    slot: warm_slots.Slot,
    manifest: images.ImageManifest,
    ca: CertificateAuthority,
    lock: warm_slots.PreparationLock | None,
    settings: FluidSettings,
    say: Progress,
) -> None:
    if lock is not None:
        try:
            warm_slots.prepare(
                conn, slot, manifest, ca.public_key_line(), rec.ssh_port, settings, say
            )
        finally:
            lock.release()
    dom, rec.host_key = warm_slots.restore(
        conn,
        slot,
        sandbox_id=rec.id,
        metadata=domain_metadata(rec, settings),
        disk=Path(rec.disk_path),
        console_log=Path(rec.console_log),
        ssh_port=rec.ssh_port,
        network=rec.network,
        next_boot_cmdline=domains.kernel_cmdline(
            manifest.cmdline or "", rec.id, ca.public_key_line()
        ),
        settings=settings,
    )
    rec.boot = "warm"
    with store.session(settings) as s:
        s.merge(rec)
    # sshd kept running through the save; its banner through the new forward proves both.
    if not ssh.banner("127.0.0.1", rec.ssh_port, timeout=settings.ready_timeout_s):
        raise WarmStartFailed(
            f"sandbox {rec.id}: no SSH banner on 127.0.0.1:{rec.ssh_port} after the restore"
        )


def _cold_boot(
    conn: libvirt.virConnect,
    rec: SandboxRecord,
    manifest: images.ImageManifest,
    ca: CertificateAuthority,
    base_disk: Path | None,
    settings: FluidSettings,
    say: Progress,
) -> None:
    disk = Path(rec.disk_path)
    if base_disk is not None:
        base_disk.rename(disk)
    else:
        warm_slots.overlay(manifest.disk_path, disk)
    seed = (
        lifecycle.seed_iso(rec.id, ca, settings.disks_dir / f"{rec.id}.seed.iso")
        if manifest.cloud_init
        else None
    )
    spec = lifecycle.domain_spec(
        name=rec.domain_name,
        instance_id=rec.id,
        metadata=domain_metadata(rec, settings),
        manifest=manifest,
        disk=disk,
        console_log=Path(rec.console_log),
        ssh_port=rec.ssh_port,
        network=rec.network,
        ca=ca,
        settings=settings,
        kernel=manifest.kernel_path,
        initrd=manifest.initrd_path,
        seed=seed,
    )
    dom = conn.defineXML(domains.render(spec))
    rec.host_key = lifecycle.boot(machine(rec), dom, settings, say)
    rec.boot = "cold"
    with store.session(settings) as s:
        s.merge(rec)


def destroy(sandbox_id: str, settings: FluidSettings | None = None) -> None:
    """Destroy a sandbox: domain, disk, snapshots, console log and records (idempotent)."""
    settings = settings or get_settings()
    validate_name(sandbox_id, "sandbox id")
    with connection(settings) as conn:
        if not teardown(conn, sandbox_id, settings):
            raise SandboxNotFound(f"no sandbox {sandbox_id!r} to destroy (nothing left of it)")


def set_owner(sandbox_id: str, owner: Owner, settings: FluidSettings | None = None) -> None:
    """Record which run and process own a sandbox now (a resumed run is a new process)."""
    settings = settings or get_settings()
    with store.session(settings) as s:
        rec = s.get(SandboxRecord, sandbox_id)
        if rec is None:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}")
        rec.owner_run, rec.owner_pid, rec.owner_pid_start = owner.run, owner.pid, owner.pid_start
        s.add(rec)


def extend(sandbox_id: str, until: datetime, settings: FluidSettings | None = None) -> Sandbox:
    """Move a sandbox's expiry to `until` if that is later (record and domain metadata)."""
    settings = settings or get_settings()
    with store.session(settings) as s:
        rec = s.get(SandboxRecord, sandbox_id)
        if rec is None:
            raise SandboxNotFound(f"no sandbox {sandbox_id!r}")
        current = rec.expires_at if rec.expires_at.tzinfo else rec.expires_at.replace(tzinfo=UTC)
        if until > current:
            rec.expires_at = until
            s.add(rec)
    with connection(settings) as conn:
        dom = lookup(conn, rec.domain_name)
        if dom is not None:
            meta = domains.read_metadata(dom)
            if meta is not None:
                meta.expires_at = rec.expires_at
                domains.write_metadata(dom, meta)
        return _view(rec, domain_state(dom))


def get(sandbox_id: str, settings: FluidSettings | None = None) -> Sandbox:
    """One sandbox with its live state."""
    settings = settings or get_settings()
    rec = record(validate_name(sandbox_id, "sandbox id"), settings)
    return _view(rec, lifecycle.state(rec.domain_name, settings))


def list_sandboxes(settings: FluidSettings | None = None) -> SandboxListing:
    """Every sandbox, reconciled with libvirt and the disk folder; orphans reported."""
    settings = settings or get_settings()
    with connection(settings) as conn:
        with store.session(settings) as s:
            records = list(
                s.exec(
                    select(SandboxRecord)
                    .where(on_this_host(SandboxRecord, settings))
                    .order_by(SandboxRecord.created_at)
                )
            )
        found = domains.fluid_domains(conn, "sandbox")
        doms = {d.name(): d for d, _m in found}
        ids = {d.name(): m.id for d, m in found}
        known = {r.id for r in records}
        disks = (
            sorted(p.name.split(".")[0] for p in settings.disks_dir.glob("*.qcow2"))
            if settings.disks_dir.is_dir()
            else []
        )
        return SandboxListing(
            # Spares are no one's yet: `fluid pool list` shows them.
            sandboxes=[
                _view(r, domain_state(doms.get(r.domain_name)))
                for r in records
                if not r.spare_state
            ],
            orphan_domains=sorted(n for n in doms if ids[n] not in known),
            orphan_records=sorted(r.id for r in records if r.domain_name not in doms),
            orphan_disks=[d for d in disks if d not in known],
        )


def start(sandbox_id: str, settings: FluidSettings | None = None) -> Sandbox:
    """Start a stopped sandbox and wait for SSH."""
    settings = settings or get_settings()
    rec = record(validate_name(sandbox_id, "sandbox id"), settings)
    lifecycle.start(machine(rec), settings, _say)
    return _view(rec, lifecycle.state(rec.domain_name, settings))


def stop(sandbox_id: str, settings: FluidSettings | None = None) -> Sandbox:
    """Power a sandbox off (its disk and checkpoints stay)."""
    settings = settings or get_settings()
    rec = record(validate_name(sandbox_id, "sandbox id"), settings)
    lifecycle.stop(machine(rec), settings)
    return _view(rec, lifecycle.state(rec.domain_name, settings))


def guest(
    sandbox_id: str,
    settings: FluidSettings | None = None,
    *,
    valid_since: datetime | None = None,
) -> ssh.GuestConnection:
    """An SSH connection to a running sandbox with a fresh short-lived certificate.

    `valid_since` backdates the certificate for a guest whose clock is behind (see ssh_ca).
    """
    settings = settings or get_settings()
    rec = record(validate_name(sandbox_id, "sandbox id"), settings)
    return lifecycle.guest(machine(rec), settings, valid_since=valid_since)


def run(
    sandbox_id: str,
    command: str,
    *,
    settings: FluidSettings | None = None,
    **options: Unpack[lifecycle.RunOptions],
) -> ssh.CommandResult:
    """Run a shell command in the sandbox as root and record it; CommandTimeout past `timeout`
    (300 s unless given; see `lifecycle.RunOptions`)."""
    settings = settings or get_settings()
    rec = record(validate_name(sandbox_id, "sandbox id"), settings)
    return lifecycle.run(machine(rec), command, settings=settings, **options)


def commands(sandbox_id: str, settings: FluidSettings | None = None) -> list[CommandRecord]:
    """The recorded commands of a sandbox, oldest first."""
    settings = settings or get_settings()
    with store.session(settings) as s:
        return list(
            s.exec(
                select(CommandRecord)
                .where(CommandRecord.sandbox_id == sandbox_id)
                .order_by(CommandRecord.id)
            )
        )


def ssh_argv(sandbox_id: str, workdir: Path, settings: FluidSettings | None = None) -> list[str]:
    """argv for a real OpenSSH session into the sandbox, with a fresh certificate in `workdir`."""
    settings = settings or get_settings()
    rec = record(validate_name(sandbox_id, "sandbox id"), settings)
    if not rec.host_key:
        raise SandboxNotRunning(f"sandbox {sandbox_id} never finished booting")
    creds = authority(settings).issue(
        lifecycle.principal(rec.id), timedelta(minutes=settings.cert_ttl_minutes)
    )
    key = creds.write_files(workdir)
    return ssh.openssh_command(
        "127.0.0.1", rec.ssh_port, key, rec.host_key, workdir / "known_hosts"
    )


def quote_command(argv: list[str]) -> str:
    """One argument runs as written through the guest shell; several are quoted (as ssh does)."""
    return argv[0] if len(argv) == 1 else shlex.join(argv)
