"""Production VMs for demos and tests: persistent, standalone copies of a golden image.

A production VM stands in for a real server that approved playbooks are applied to. Unlike a
sandbox it owns its whole disk (a full copy, no backing file, so rebuilding or pruning the
image cannot touch it) and its own kernel and initrd, and it never expires. It boots exactly
like a sandbox (same domain XML, SSH forward from a 127.0.0.1 port, CA trust and host key
learned from the serial console) with the instance id `prod-NAME`, so its sshd accepts only
certificates for the principal `fluid-prod-NAME` signed by fluid's CA.

Files live under `<storage>/production/`: NAME.qcow2, NAME.vmlinuz, NAME.initrd,
NAME.seed.iso (imported cloud-init images only) and NAME.console.log.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Literal, Unpack

import libvirt
from pydantic import BaseModel
from sqlmodel import select

from infra.errors import (
    DiskError,
    ProductionExists,
    ProductionNotFound,
    ProductionNotReady,
    ProductionNotRunning,
)
from infra.host import domains, firewall, images, ports
from infra.host.identity import host_id
from infra.host.libvirt_host import connection, domain_state, lookup, remove_domain
from infra.host.permissions import qemu_dir
from infra.machines import lifecycle
from infra.names import validate_name
from infra.records import store
from infra.records.hosts import on_this_host
from infra.records.store import ProductionRecord
from infra.settings import FluidSettings, get_settings
from infra.transport import ssh, ssh_ca
from infra.transport.ssh_ca import CertificateAuthority

Progress = Callable[[str], None]
DOMAIN_PREFIX = "fluid-prod-"


class ProductionVM(BaseModel):
    """A production VM as users see it."""

    name: str
    domain_name: str
    state: Literal["running", "paused", "shut off", "missing"]
    image: str
    image_version: str
    address: str  # where its SSH forward listens: other fluid hosts apply to it there
    ssh_port: int
    host_key: str | None
    principal: str
    created_at: datetime


class ProductionListing(BaseModel):
    """Production VMs reconciled with libvirt, and orphans in either direction."""

    vms: list[ProductionVM]
    orphan_domains: list[str] = []
    orphan_records: list[str] = []


class _Paths(BaseModel):
    """Every file a production VM owns."""

    disk: Path
    kernel: Path
    initrd: Path
    seed: Path
    console: Path

    def all(self) -> list[Path]:
        return [self.disk, self.kernel, self.initrd, self.seed, self.console]


def _say(_msg: str) -> None:
    pass


def domain_name(name: str) -> str:
    """The libvirt domain of production VM `name`."""
    return DOMAIN_PREFIX + name


def instance_id(name: str) -> str:
    """The guest's instance id (hostname, fluid.sandbox= on the kernel command line)."""
    return f"prod-{name}"


def principal(name: str) -> str:
    """The only certificate principal the production VM's sshd accepts."""
    return lifecycle.principal(instance_id(name))


PRODUCTION = lifecycle.Kind(
    "production VM",
    "fluid production",
    (ProductionNotFound, ProductionNotReady, ProductionNotRunning),
)


def machine(rec: ProductionRecord) -> lifecycle.Machine:
    """A production VM as the VM lifecycle sees it."""
    return lifecycle.Machine.of(
        rec,
        PRODUCTION,
        name=rec.name,
        instance_id=instance_id(rec.name),
        production=rec.name,
        address=rec.address or "127.0.0.1",
    )


def storage_dir(settings: FluidSettings) -> Path:
    """Where production VMs' disks, kernels and console logs live."""
    return settings.storage_dir / "production"


def _paths(name: str, settings: FluidSettings) -> _Paths:
    d = storage_dir(settings)
    return _Paths(
        disk=d / f"{name}.qcow2",
        kernel=d / f"{name}.vmlinuz",
        initrd=d / f"{name}.initrd",
        seed=d / f"{name}.seed.iso",
        console=d / f"{name}.console.log",
    )


def _record(name: str, settings: FluidSettings) -> ProductionRecord:
    with store.session(settings) as s:
        rec = s.get(ProductionRecord, validate_name(name, "production name"))
    if rec is None:
        raise ProductionNotFound(
            f"no production VM {name!r}; `fluid production list` shows them, "
            f"`fluid production create {name}` makes it"
        )
    return rec


def _view(rec: ProductionRecord, state: str) -> ProductionVM:
    return ProductionVM(
        name=rec.name,
        domain_name=rec.domain_name,
        state=state,  # type: ignore[arg-type]
        image=rec.image,
        image_version=rec.image_version,
        address=rec.address or "127.0.0.1",
        ssh_port=rec.ssh_port,
        host_key=rec.host_key,
        principal=principal(rec.name),
        created_at=rec.created_at,
    )


def _traces(conn: libvirt.virConnect, name: str, settings: FluidSettings) -> list[str]:
    """What exists of production VM `name`: its record, domain and files."""
    found = []
    with store.session(settings) as s:
        if s.get(ProductionRecord, name) is not None:
            found.append("record")
    if lookup(conn, domain_name(name)) is not None:
        found.append(f"domain {domain_name(name)}")
    found += [str(p) for p in _paths(name, settings).all() if p.exists()]
    return found


def _record_ports(settings: FluidSettings) -> set[int]:
    with store.session(settings) as s:
        mine = select(ProductionRecord).where(on_this_host(ProductionRecord, settings))
        return {r.ssh_port for r in s.exec(mine).all()}


def create(
    name: str,
    *,
    image: str | None = None,
    image_version: str | None = None,
    progress: Progress | None = None,
    settings: FluidSettings | None = None,
) -> ProductionVM:
    """Create production VM `name` and wait until SSH answers; on any failure nothing is left.

    ProductionExists when anything of that name exists already (record, domain or files).
    """
    settings = settings or get_settings()
    say = progress or _say
    validate_name(name, "production name")
    with connection(settings) as conn:
        _refuse_existing(conn, name, settings)
        manifest = lifecycle.golden_image(image, image_version, settings, say)
        firewall.ensure_guard(settings)
        ca = ssh_ca.authority(settings)
        paths = _paths(name, settings)
        qemu_dir(storage_dir(settings), settings.storage_dir)
        rec = ProductionRecord(
            name=name,
            host_id=host_id(settings),
            domain_name=domain_name(name),
            image=manifest.name,
            image_version=manifest.version,
            address=settings.production_address,
            ssh_port=0,
            disk_path=str(paths.disk),
            console_log=str(paths.console),
        )
        with ports.allocation_lock(settings.storage_dir):
            # Checked again under the lock: of two creators of one name only one may go on,
            # or the loser's cleanup would remove the winner's VM.
            _refuse_existing(conn, name, settings)
            rec.ssh_port = ports.pick(
                settings.port_range,
                ports.reserved(conn, settings) | _record_ports(settings),
                address=settings.production_address,
            )
            try:
                with store.session(settings) as s:
                    s.add(rec)
                # Defined while the lock is held: sandboxes see reserved ports in domain XML.
                dom = conn.defineXML(domains.render(_spec(rec, manifest, paths, ca, settings)))
            except BaseException:
                _teardown(conn, name, settings)
                raise
        try:
            _provision(dom, rec, manifest, paths, ca, settings, say)
        except BaseException:
            _teardown(conn, name, settings)
            raise
        return _view(rec, domain_state(dom))


def _refuse_existing(conn: libvirt.virConnect, name: str, settings: FluidSettings) -> None:
    traces = _traces(conn, name, settings)
    if traces:
        raise ProductionExists(
            f"production VM {name!r} already exists ({', '.join(traces)}); pick another name, "
            f"or `fluid production destroy {name}` first"
        )


def _spec(
    rec: ProductionRecord,
    manifest: images.ImageManifest,
    paths: _Paths,
    ca: CertificateAuthority,
    settings: FluidSettings,
) -> domains.DomainSpec:
    return lifecycle.domain_spec(
        name=rec.domain_name,
        instance_id=instance_id(rec.name),
        metadata=domains.FluidMetadata(
            kind="production",
            id=rec.name,
            expires_at=None,
            created_at=rec.created_at,
            store=settings.store_id,
            host=rec.host_id,
        ),
        manifest=manifest,
        disk=paths.disk,
        console_log=paths.console,
        ssh_port=rec.ssh_port,
        listen=rec.address or "127.0.0.1",
        network=settings.network,
        ca=ca,
        settings=settings,
        kernel=paths.kernel if manifest.kernel else None,
        initrd=paths.initrd if manifest.initrd else None,
        seed=paths.seed if manifest.cloud_init else None,
        # Unlike a throwaway sandbox this disk must survive a host crash: honour guest flushes.
        disk_cache="writeback",
    )


def _provision(
    dom: libvirt.virDomain,
    rec: ProductionRecord,
    manifest: images.ImageManifest,
    paths: _Paths,
    ca: CertificateAuthority,
    settings: FluidSettings,
    say: Progress,
) -> None:
    start = time.monotonic()
    say(f"production {rec.name}: copying {manifest.name} {manifest.version} to a standalone disk")
    _copy_disk(manifest.disk_path, paths.disk)
    # The kernel and initrd are copied too: a later image prune must not break a restart.
    for source, target in (
        (manifest.kernel_path, paths.kernel),
        (manifest.initrd_path, paths.initrd),
    ):
        if source is not None:
            try:
                shutil.copyfile(source, target)
            except OSError as e:
                raise DiskError(f"cannot copy {source} to {target}: {e}") from e
    if manifest.cloud_init:
        lifecycle.seed_iso(instance_id(rec.name), ca, paths.seed)
    rec.host_key = lifecycle.boot(machine(rec), dom, settings, say)
    with store.session(settings) as s:
        s.merge(rec)
    say(f"production {rec.name}: ready in {time.monotonic() - start:.1f} s")


def _copy_disk(source: Path, target: Path) -> None:
    """A full, standalone qcow2 copy of `source` (no backing file)."""
    r = subprocess.run(
        ["qemu-img", "convert", "-q", "-O", "qcow2", str(source), str(target)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise DiskError(
            f"qemu-img could not copy {source} to {target}: {r.stderr.strip()}; check free "
            "space under FLUID_STORAGE_DIR"
        )


def _teardown(conn: libvirt.virConnect, name: str, settings: FluidSettings) -> bool:
    """Remove every trace of a production VM; True when anything existed."""
    found = remove_domain(conn, domain_name(name))
    for path in _paths(name, settings).all():
        if path.exists():
            found = True
            path.unlink()
    with store.session(settings) as s:
        rec = s.get(ProductionRecord, name)
        if rec is not None:
            found = True
            s.delete(rec)
    return found


def destroy(name: str, settings: FluidSettings | None = None) -> None:
    """Destroy production VM `name`: domain, disk, kernel, console log and record.

    ProductionNotFound when nothing of it existed. Its recorded commands stay (audit trail).
    """
    settings = settings or get_settings()
    validate_name(name, "production name")
    with connection(settings) as conn:
        if not _teardown(conn, name, settings):
            raise ProductionNotFound(f"no production VM {name!r} to destroy (nothing left of it)")


def get(name: str, settings: FluidSettings | None = None) -> ProductionVM:
    """One production VM with its live state."""
    settings = settings or get_settings()
    rec = _record(name, settings)
    return _view(rec, lifecycle.state(rec.domain_name, settings))


def list_production(settings: FluidSettings | None = None) -> ProductionListing:
    """Every production VM, reconciled with libvirt; orphans reported."""
    settings = settings or get_settings()
    with connection(settings) as conn:
        with store.session(settings) as s:
            records = list(
                s.exec(select(ProductionRecord).order_by(ProductionRecord.created_at)).all()
            )
        doms = {d.name(): d for d, _m in domains.fluid_domains(conn, "production")}
        known = {r.domain_name for r in records}
        return ProductionListing(
            vms=[_view(r, domain_state(doms.get(r.domain_name))) for r in records],
            orphan_domains=sorted(n for n in doms if n not in known),
            orphan_records=sorted(r.name for r in records if r.domain_name not in doms),
        )


def start(
    name: str, *, progress: Progress | None = None, settings: FluidSettings | None = None
) -> ProductionVM:
    """Start a stopped production VM (e.g. after a host reboot) and wait for SSH."""
    settings = settings or get_settings()
    rec = _record(name, settings)
    host_key = lifecycle.start(
        machine(rec),
        settings,
        progress or _say,
        hint=f" (is 127.0.0.1:{rec.ssh_port} taken by another process?)",
    )
    if host_key is not None and rec.host_key is None:
        rec.host_key = host_key
        with store.session(settings) as s:
            s.merge(rec)
    return _view(rec, lifecycle.state(rec.domain_name, settings))


def stop(name: str, settings: FluidSettings | None = None) -> ProductionVM:
    """Power a production VM off after flushing its disk (its disk and record stay)."""
    settings = settings or get_settings()
    rec = _record(name, settings)
    lifecycle.stop(machine(rec), settings)
    return _view(rec, lifecycle.state(rec.domain_name, settings))


def guest(name: str, settings: FluidSettings | None = None) -> ssh.GuestConnection:
    """An SSH connection to a running production VM with a fresh short-lived certificate."""
    settings = settings or get_settings()
    return lifecycle.guest(machine(_record(name, settings)), settings)


def run(
    name: str,
    command: str,
    *,
    settings: FluidSettings | None = None,
    **options: Unpack[lifecycle.RunOptions],
) -> ssh.CommandResult:
    """Run a shell command as root in production VM `name` and record it (as `prod-NAME`);
    CommandTimeout past `timeout` (the partial output is in its `.result`)."""
    settings = settings or get_settings()
    return lifecycle.run(machine(_record(name, settings)), command, settings=settings, **options)
