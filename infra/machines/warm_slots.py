"""Warm starts: sandboxes restored from saved, already booted golden VMs ("slots").

A slot is a golden VM booted once from an overlay of its own and then saved by libvirt (its
memory to a state file); the slot's overlay is never written again. A sandbox restores a
free slot's state onto a fresh overlay resting on the slot's overlay: a running guest in
about half a second instead of a boot. libvirt refuses to restore a state under another
name or UUID, so a slot runs one sandbox at a time, as domain `fluid-pool-<slot>` with the
sandbox's id in fluid's metadata.

Restored guests start out identical, so before anything else runs in one, fluid gives it its
own identity through QEMU's guest agent: the clock, the kernel's random state (host entropy,
then RNDRESEEDCRNG), machine-id, SSH host key, hostname and the principal sshd accepts.

Files live under <storage>/pool/<store id>/: <slot>.qcow2 (overlay), <slot>.save (state) and
<slot>.json (manifest, written last: a slot without it is unfinished). A slot's name carries
a hash of everything its saved guest depends on (image version, CA, memory, CPUs, domain
type), so a slot made for other settings is never restored; `clear` and the next fill
remove stale ones.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import libvirt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import BaseModel
from sqlmodel import select

from infra.errors import GuestAgentError, WarmStartFailed
from infra.host import domains, firewall, images, ports
from infra.host.file_locks import FileLock
from infra.host.identity import host_id
from infra.host.libvirt_host import connect, domain_type, remove_domain
from infra.host.permissions import qemu_dir
from infra.records import store
from infra.records.hosts import on_this_host
from infra.settings import FluidSettings, get_settings
from infra.transport import guest_agent
from infra.transport.ssh_ca import authority

if TYPE_CHECKING:
    from infra.state.base import ResourceKind

Progress = Callable[[str], None]
DOMAIN_PREFIX = "fluid-pool-"
# Bump when what a slot's saved guest contains changes in a way the key does not show.
SLOT_FORMAT = 1


class SlotManifest(BaseModel):
    """A prepared slot: what it was booted from and when it was saved."""

    name: str
    image: str
    image_version: str
    memory_mib: int
    saved_at: datetime
    boot_seconds: float
    state_bytes: int


class SlotInfo(SlotManifest):
    """A prepared slot as `fluid pool list` shows it."""

    in_use_by: str | None = None


class Slot(BaseModel):
    """A slot claimed for one sandbox (or for filling), prepared or still to be prepared."""

    name: str
    prepared: bool
    manifest: SlotManifest | None = None

    @property
    def domain_name(self) -> str:
        return DOMAIN_PREFIX + self.name

    @property
    def instance_id(self) -> str:
        """The identity the slot's guest boots with (before a sandbox gets its own)."""
        return "pool-" + self.name


class Claim(BaseModel):
    """The outcome of looking for a slot: one, or why a cold boot it is."""

    slot: Slot | None = None
    reason: str = ""


def pool_dir(settings: FluidSettings) -> Path:
    """This database's slots (slots trust its CA and are claimed through its records)."""
    return settings.storage_dir / "pool" / settings.store_id


def _paths(name: str, settings: FluidSettings) -> tuple[Path, Path, Path]:
    d = pool_dir(settings)
    return d / f"{name}.qcow2", d / f"{name}.save", d / f"{name}.json"


def memory(slot_name: str, kind: ResourceKind, settings: FluidSettings) -> Path:
    """Where a remembering kind's probe output from the slot's boot is kept."""
    return pool_dir(settings) / f"{slot_name}.{kind.memory_name()}"


def _remember_probes(dom: libvirt.virDomain, slot: Slot, settings: FluidSettings) -> None:
    # Nothing but fluid has run in the guest yet, so these outputs can be trusted as the base
    # a sandbox's first capture builds on (see infra/state/capture.py). Imported here: every
    # `fluid sandbox` command imports this module, and its start-up is what a user waits for.
    from infra.state.base import kinds

    for kind in kinds().values():
        if not kind.remembered() or not kind.remembered_at_boot:
            continue
        r = guest_agent.run(
            dom, ["/bin/sh", "-c", kind.standalone_probe()], timeout_s=settings.ready_timeout_s
        )
        if r.exit_code != 0:
            raise WarmStartFailed(
                f"slot {slot.name}: the {kind.name} probe failed: {r.stderr.strip()[-500:]}"
            )
        path = memory(slot.name, kind, settings)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(kind.complete(r.stdout, None), encoding="utf-8")
        tmp.rename(path)


def slot_key(manifest: images.ImageManifest, ca_public_line: str, settings: FluidSettings) -> str:
    """A short hash of everything a slot's saved guest depends on."""
    parts = (
        SLOT_FORMAT,
        settings.store_id,
        host_id(settings),
        manifest.directory,
        manifest.sha256,
        ca_public_line,
        settings.memory_mib,
        settings.vcpus,
        settings.tb_cache_mib,
        domain_type(settings),
    )
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8]


def unavailable(manifest: images.ImageManifest, settings: FluidSettings) -> str | None:
    """Why sandboxes of this image cannot start warm here, or None when they can."""
    if settings.warm_slots == 0:
        return "warm starts are off (FLUID_WARM_SLOTS=0)"
    if not manifest.guest_agent or not manifest.kernel:
        return (
            f"image {manifest.name} {manifest.version} has no guest agent to reseed a restored "
            "VM's identity (imported, or built before warm starts): `fluid image build` "
            "makes one that has"
        )
    return None


def _load(path: Path) -> SlotManifest | None:
    try:
        return SlotManifest.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None


def _in_use(conn: libvirt.virConnect, settings: FluidSettings) -> dict[str, str]:
    """Slots a sandbox holds (slot → sandbox id), and slots whose domain runs anyway."""
    with store.session(settings) as s:
        held = {
            r.slot: r.id
            for r in s.exec(
                select(store.SandboxRecord).where(on_this_host(store.SandboxRecord, settings))
            ).all()
            if r.slot is not None
        }
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        if dom.name().startswith(DOMAIN_PREFIX):
            held.setdefault(dom.name().removeprefix(DOMAIN_PREFIX), "(running without a record)")
    return held


def _held(settings: FluidSettings) -> dict[str, str]:
    conn = connect(settings)
    try:
        return _in_use(conn, settings)
    finally:
        conn.close()


def being_prepared(name: str, settings: FluidSettings) -> bool:
    """True while some process holds the slot's PreparationLock."""
    with FileLock(pool_dir(settings) / f"{name}.lock", wait=False) as lock:
        return not lock.held


class PreparationLock(FileLock):
    """Held while a slot is being prepared, so no one else prepares or restores it."""

    def __init__(self, name: str, settings: FluidSettings) -> None:
        super().__init__(pool_dir(settings) / f"{name}.lock", wait=True)


def claim(
    conn: libvirt.virConnect,
    manifest: images.ImageManifest,
    ca_public_line: str,
    settings: FluidSettings,
    *,
    prepared_only: bool = False,
) -> Claim:
    """A free slot for `manifest`: a prepared one, else a new number while under the limit.

    Call under the host's allocation lock and record the claim (a sandbox record naming the
    slot, or a PreparationLock) before releasing it.
    """
    reason = unavailable(manifest, settings)
    if reason:
        return Claim(reason=reason)
    qemu_dir(pool_dir(settings), settings.storage_dir)
    key = slot_key(manifest, ca_public_line, settings)
    held = _in_use(conn, settings)
    numbers: set[int] = set()
    for path in sorted(pool_dir(settings).glob(f"{key}-*.json")):
        name = path.stem
        number = int(name.rsplit("-", 1)[1])
        if number >= settings.warm_slots:
            continue  # FLUID_WARM_SLOTS was lowered since this slot was made
        numbers.add(number)
        slot_manifest = _load(path)
        if slot_manifest is not None and name not in held and not prepared_only:
            return Claim(slot=Slot(name=name, prepared=True, manifest=slot_manifest))
    numbers |= {int(n.rsplit("-", 1)[1]) for n in held if n.startswith(f"{key}-")}
    for n in range(settings.warm_slots):
        name = f"{key}-{n}"
        if n not in numbers and not being_prepared(name, settings):
            return Claim(slot=Slot(name=name, prepared=False))
    busy = len([n for n in held if n.startswith(f"{key}-")])
    return Claim(
        reason=f"all {settings.warm_slots} warm slots are in use ({busy} running); "
        "raise FLUID_WARM_SLOTS for more"
    )


def overlay(base: Path, disk: Path) -> None:
    """A new qcow2 disk at `disk` whose unwritten blocks read from `base`."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(disk)],
        check=True,
        capture_output=True,
    )


def boot(
    conn: libvirt.virConnect,
    slot: Slot,
    manifest: images.ImageManifest,
    ca_public_line: str,
    *,
    ssh_port: int,
    settings: FluidSettings,
) -> libvirt.virDomain:
    """Start the slot's one cold boot (a transient domain: saving it removes it)."""
    slot_disk, _state, _json = _paths(slot.name, settings)
    slot_disk.unlink(missing_ok=True)
    overlay(manifest.disk_path, slot_disk)
    spec = domains.DomainSpec(
        name=slot.domain_name,
        metadata=domains.FluidMetadata(
            kind="pool",
            id=slot.name,
            created_at=datetime.now(UTC),
            store=settings.store_id,
            host=host_id(settings),
        ),
        domain_type=domain_type(settings),
        memory_mib=settings.memory_mib,
        vcpus=settings.vcpus,
        tb_cache_mib=settings.tb_cache_mib,
        disk_path=slot_disk,
        console_log=pool_dir(settings) / f"{slot.name}.console.log",
        ssh_port=ssh_port,
        network="nat",
        kernel=manifest.kernel_path,
        initrd=manifest.initrd_path,
        cmdline=domains.kernel_cmdline(manifest.cmdline or "", slot.instance_id, ca_public_line),
    )
    firewall.ensure_guard(settings)
    try:
        return conn.createXML(domains.render(spec), 0)
    except libvirt.libvirtError as e:
        raise WarmStartFailed(f"could not boot slot {slot.name}: {e.get_error_message()}") from e


def save(
    dom: libvirt.virDomain,
    slot: Slot,
    manifest: images.ImageManifest,
    *,
    started: float,
    settings: FluidSettings,
) -> SlotManifest:
    """Wait until the slot's boot has settled, then save its memory and freeze its overlay."""
    slot_disk, state, meta = _paths(slot.name, settings)
    try:
        guest_agent.wait_until_up(dom, settings.ready_timeout_s)
        # A settled boot (no start jobs left) and an ssh that listens make a state worth
        # restoring many times; sync so the overlay alone matches the page cache.
        settled = guest_agent.run(
            dom,
            [
                "/bin/sh",
                "-c",
                "systemctl is-system-running --wait >/dev/null; systemctl is-active ssh; sync",
            ],
            timeout_s=settings.ready_timeout_s,
        )
        if settled.exit_code != 0:
            raise WarmStartFailed(
                f"slot {slot.name}: sshd is not running after boot ({settled.stdout.strip()})"
            )
        _remember_probes(dom, slot, settings)
        dom.save(str(state))
    except (GuestAgentError, libvirt.libvirtError) as e:
        message = e.get_error_message() if isinstance(e, libvirt.libvirtError) else str(e)
        raise WarmStartFailed(f"could not prepare slot {slot.name}: {message}") from e
    slot_disk.chmod(0o444)
    saved = SlotManifest(
        name=slot.name,
        image=manifest.name,
        image_version=manifest.version,
        memory_mib=settings.memory_mib,
        saved_at=datetime.now(UTC),
        boot_seconds=round(time.monotonic() - started, 1),
        state_bytes=state.stat().st_size,
    )
    tmp = meta.with_suffix(".json.tmp")
    tmp.write_text(saved.model_dump_json(indent=2) + "\n")
    tmp.rename(meta)
    (pool_dir(settings) / f"{slot.name}.console.log").unlink(missing_ok=True)
    return saved


def prepare(
    conn: libvirt.virConnect,
    slot: Slot,
    manifest: images.ImageManifest,
    ca_public_line: str,
    ssh_port: int,
    settings: FluidSettings,
    say: Progress,
) -> SlotManifest:
    """Boot a claimed slot once and save it; on failure nothing of it is left."""
    started = time.monotonic()
    dom = boot(conn, slot, manifest, ca_public_line, ssh_port=ssh_port, settings=settings)
    return _finish(conn, dom, slot, manifest, started, settings, say)


def _finish(
    conn: libvirt.virConnect,
    dom: libvirt.virDomain,
    slot: Slot,
    manifest: images.ImageManifest,
    started: float,
    settings: FluidSettings,
    say: Progress,
) -> SlotManifest:
    say(f"preparing warm slot {slot.name}: one cold boot, saved for later sandboxes to restore")
    try:
        saved = save(dom, slot, manifest, started=started, settings=settings)
    except BaseException:
        remove_domain(conn, slot.domain_name)
        discard(slot.name, settings)
        raise
    say(
        f"warm slot {slot.name} ready ({saved.boot_seconds:.0f} s, "
        f"{saved.state_bytes / 2**20:.0f} MiB saved)"
    )
    return saved


def fill(
    count: int | None = None,
    *,
    image: str | None = None,
    progress: Progress | None = None,
    settings: FluidSettings | None = None,
) -> list[SlotManifest]:
    """Prepare slots, one at a time, until `count` (default FLUID_WARM_SLOTS) exist."""
    settings = settings or get_settings()
    say = progress or (lambda _m: None)
    count = settings.warm_slots if count is None else count
    if count > settings.warm_slots:
        settings = settings.model_copy(update={"warm_slots": count})
    manifest = images.resolve(image or settings.image, None, settings)
    ca_line = authority(settings).public_key_line()
    key = slot_key(manifest, ca_line, settings)
    clear(settings, keep_key=key)  # slots of an older image, CA or guest size
    prepared: list[SlotManifest] = []
    conn = connect(settings)
    try:
        while len(list(pool_dir(settings).glob(f"{key}-*.json"))) < count:
            with ports.allocation_lock(settings.storage_dir):
                claimed = claim(conn, manifest, ca_line, settings, prepared_only=True)
                if claimed.slot is None:
                    raise WarmStartFailed(f"cannot prepare another slot: {claimed.reason}")
                slot = claimed.slot
                lock = PreparationLock(slot.name, settings)
                try:
                    # Booted under the lock: the domain's XML is what reserves its port.
                    started = time.monotonic()
                    dom = boot(
                        conn,
                        slot,
                        manifest,
                        ca_line,
                        ssh_port=ports.pick(settings.port_range, ports.reserved(conn, settings)),
                        settings=settings,
                    )
                except BaseException:
                    lock.release()
                    raise
            try:
                prepared.append(_finish(conn, dom, slot, manifest, started, settings, say))
            finally:
                lock.release()
    finally:
        conn.close()
    return prepared


def discard(slot_name: str, settings: FluidSettings) -> None:
    """Remove a slot's files (its domain must not run); its lock file is the caller's."""
    # Every file named after the slot: disk, state, manifest, console log, remembered probe
    # outputs, and the .tmp of a write a killed process never renamed.
    for path in pool_dir(settings).glob(f"{slot_name}.*"):
        if path.suffix != ".lock":
            path.unlink(missing_ok=True)


# One perl process (perl-base is in every Debian) does all of a restored guest's identity:
# each extra process costs a fresh translation under TCG right after a restore. Order
# matters: the clock first (the saved state is as old as the slot), the kernel's random
# state before anything random happens. Syscall numbers are x86_64's (fluid's guests are).
_IDENTITY_PERL = r"""
use strict;
my ($sec, $usec, $id, $machine_id, $public) = @ARGV;
binmode STDIN; local $/; my ($entropy, $private) = split /\n/, <STDIN>, 2;
sub put { my ($path, $text, $mode) = @_; unlink $path;
  open(my $f, ">", $path) or die "$path: $!"; chmod $mode, $path; print $f $text;
  close $f or die "$path: $!"; }
syscall(164, pack("l!l!", $sec, $usec), 0) == 0 or die "settimeofday: $!";
open(my $w, ">", "/dev/urandom") or die "urandom: $!"; binmode $w;
print $w pack("H*", $entropy); close $w or die "urandom: $!";
open(my $r, "<", "/dev/urandom") or die "urandom: $!";
ioctl($r, 0x5207, 0) or die "RNDRESEEDCRNG: $!";
put("/etc/machine-id", "$machine_id\n", 0444);
syscall(170, $id, length $id) == 0 or die "sethostname: $!";
put("/etc/ssh/fluid_principals", "fluid-$id\n", 0644);
put("/etc/ssh/fluid_instance", "$id\n", 0644);
unlink glob "/etc/ssh/ssh_host_*";
put("/etc/ssh/ssh_host_ed25519_key", $private, 0600);
put("/etc/ssh/ssh_host_ed25519_key.pub", "$public fluid-$id\n", 0644);
print "ok\n";
"""


def _reseed_identity(dom: libvirt.virDomain, sandbox_id: str) -> str:
    """Give a restored guest its own clock, random state, machine-id, hostname, host key and
    principal; return the new host key (made here, so the host never has to trust the guest
    for it)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    # libvirt learns that the restored guest's agent is connected a moment after the restore.
    guest_agent.wait_until_up(dom, 15)
    now = time.time()
    result = guest_agent.run(
        dom,
        [
            "/usr/bin/perl",
            "-e",
            _IDENTITY_PERL,
            str(int(now)),
            str(int((now % 1) * 1_000_000)),
            sandbox_id,
            uuid.uuid4().hex,
            public,
        ],
        timeout_s=30,
        # Secrets go in on stdin, never on a command line other guest processes could read.
        stdin=secrets.token_bytes(64).hex().encode() + b"\n" + private,
    )
    if result.exit_code != 0 or result.stdout.strip() != "ok":
        raise WarmStartFailed(
            f"reseeding the identity of {sandbox_id} failed (exit {result.exit_code}): "
            f"{(result.stderr or result.stdout).strip()[-500:]}"
        )
    return public


def restore(
    conn: libvirt.virConnect,
    slot: Slot,
    *,
    sandbox_id: str,
    metadata: domains.FluidMetadata,
    disk: Path,
    console_log: Path,
    ssh_port: int,
    network: str,
    next_boot_cmdline: str,
    settings: FluidSettings,
) -> tuple[libvirt.virDomain, str]:
    """Run the slot's saved guest as sandbox `sandbox_id` with its own identity.

    Returns the domain and the sandbox's new SSH host key. The domain is then defined with
    the sandbox's own kernel command line, so a stop and start boots it cold as itself.
    """
    slot_disk, state, _meta = _paths(slot.name, settings)
    overlay(slot_disk, disk)
    try:
        saved_xml = conn.saveImageGetXMLDesc(str(state), 0)
        xml = domains.retarget(
            saved_xml,
            metadata=metadata,
            disk_path=disk,
            console_log=console_log,
            ssh_port=ssh_port,
            network=network,  # type: ignore[arg-type]
        )
        firewall.ensure_guard(settings)
        conn.restoreFlags(str(state), xml, libvirt.VIR_DOMAIN_SAVE_RUNNING)
        dom = conn.lookupByName(slot.domain_name)
    except (libvirt.libvirtError, ValueError) as e:
        message = e.get_error_message() if isinstance(e, libvirt.libvirtError) else str(e)
        raise WarmStartFailed(f"libvirt could not restore slot {slot.name}: {message}") from e
    try:
        host_key = _reseed_identity(dom, sandbox_id)
        conn.defineXML(
            domains.retarget(
                dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE),
                metadata=metadata,
                disk_path=disk,
                console_log=console_log,
                ssh_port=ssh_port,
                network=network,  # type: ignore[arg-type]
                cmdline=next_boot_cmdline,
            )
        )
    except (GuestAgentError, libvirt.libvirtError) as e:
        message = e.get_error_message() if isinstance(e, libvirt.libvirtError) else str(e)
        raise WarmStartFailed(f"sandbox {sandbox_id} restored but not reseeded: {message}") from e
    return dom, host_key


def list_slots(settings: FluidSettings | None = None) -> list[SlotInfo]:
    """Every prepared slot of this database, and which sandbox holds it."""
    settings = settings or get_settings()
    if not pool_dir(settings).is_dir():
        return []
    held = _held(settings)
    out = []
    for path in sorted(pool_dir(settings).glob("*.json")):
        m = _load(path)
        if m is not None:
            out.append(SlotInfo(**m.model_dump(), in_use_by=held.get(m.name)))
    return out


def clear(settings: FluidSettings | None = None, *, keep_key: str | None = None) -> list[str]:
    """Remove every slot no sandbox holds (all of them, or those not of `keep_key`)."""
    settings = settings or get_settings()
    d = pool_dir(settings)
    if not d.is_dir():
        return []
    held = _held(settings)
    removed = []
    names = {p.name.split(".")[0] for p in d.iterdir()}
    for name in sorted(names):
        if name in held or (keep_key and name.startswith(f"{keep_key}-")):
            continue
        # Held across the removal: a preparer that locked between a check and the removal
        # would go on preparing a slot whose files are gone.
        with FileLock(d / f"{name}.lock", wait=False) as lock:
            if not lock.held:  # being prepared right now
                continue
            discard(name, settings)
            # Removed while held: whoever waits on it re-takes the lock on a new file.
            (d / f"{name}.lock").unlink(missing_ok=True)
        removed.append(name)
    if not any(d.iterdir()):
        d.rmdir()
    return removed
