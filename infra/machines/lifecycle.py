"""One VM lifecycle for every fluid VM, sandbox or production: describe its domain, boot it,
wait for SSH, connect with a fresh certificate, run a recorded command, power it off.

Sandboxes (linked clones with a TTL, warm-started when they can) and production VMs
(standalone copies that never expire) differ in how their disks are made and how long they
live; everything after the disk is this module. A `Machine` says which VM; its `Kind`
says how messages name it and which of fluid's exceptions its callers see.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol, TypedDict

import libvirt

from infra.errors import CommandTimeout, FluidError, SSHError
from infra.escaping import term_text
from infra.host import domains, firewall, images
from infra.host.libvirt_host import connection, domain_state, domain_type, lookup
from infra.records import audit, store
from infra.records.store import CommandRecord
from infra.settings import FluidSettings
from infra.transport import ssh
from infra.transport.ssh_ca import CertificateAuthority, authority

Progress = Callable[[str], None]
HOSTKEY_LINE = re.compile(r"fluid-hostkey: (ssh-ed25519 [A-Za-z0-9+/=]+)")
CLOUD_INIT_KEY = re.compile(r"^(ssh-ed25519 [A-Za-z0-9+/=]+)", re.MULTILINE)


class VMRecord(Protocol):
    """What the store records of any fluid VM (SandboxRecord and ProductionRecord both)."""

    domain_name: str
    ssh_port: int
    host_key: str | None
    console_log: str


@dataclass(frozen=True)
class Kind:
    """A kind of fluid VM: how messages name it, and the errors its callers see."""

    noun: str  # "sandbox", "production VM"
    command: str  # its CLI noun, for hints: "fluid sandbox"
    errors: tuple[type[FluidError], type[FluidError], type[FluidError]]

    @property
    def missing(self) -> type[FluidError]:
        """Raised when a VM of this kind has no domain (or no record)."""
        return self.errors[0]

    @property
    def not_ready(self) -> type[FluidError]:
        """Raised when a VM of this kind does not boot to SSH."""
        return self.errors[1]

    @property
    def not_running(self) -> type[FluidError]:
        """Raised when a VM of this kind is not running (or never finished booting)."""
        return self.errors[2]


class RunOptions(TypedDict, total=False):
    """How a recorded command runs: `run`'s keyword arguments, shared by every VM kind."""

    timeout: float  # seconds; CommandTimeout past it (partial output in its `.result`)
    output_cap: int  # bytes kept of each stream (head and tail)
    actor: str | None  # who ran it, for the records; fluid's default actor when None
    valid_since: datetime | None  # backdates the certificate for a guest whose clock is behind


@dataclass(frozen=True)
class Machine:
    """One fluid VM as the lifecycle sees it."""

    kind: Kind
    name: str
    instance_id: str  # the guest's fluid.sandbox id: its principal and its commands' records
    domain_name: str
    ssh_port: int
    host_key: str | None
    console_log: Path
    production: str | None = None  # a production VM's name (its commands' audit records)
    address: str = "127.0.0.1"  # where its SSH forward listens

    @classmethod
    def of(
        cls,
        rec: VMRecord,
        kind: Kind,
        *,
        name: str,
        instance_id: str,
        production: str | None = None,
        address: str = "127.0.0.1",
    ) -> Machine:
        """The machine a store record describes."""
        return cls(
            kind=kind,
            name=name,
            instance_id=instance_id,
            domain_name=rec.domain_name,
            ssh_port=rec.ssh_port,
            # Pinned once learned: a restarted guest keeps its key, and cloud-init prints it
            # only at the first boot.
            host_key=rec.host_key,
            console_log=Path(rec.console_log),
            production=production,
            address=address,
        )

    @property
    def label(self) -> str:
        """How messages name it: "sandbox ab12cd34", "production VM web"."""
        return f"{self.kind.noun} {self.name}"


def principal(instance_id: str) -> str:
    """The only certificate principal a fluid VM's sshd accepts."""
    return f"fluid-{instance_id}"


def golden_image(
    image: str | None,
    version: str | None,
    settings: FluidSettings,
    say: Progress,
) -> images.ImageManifest:
    """The image a new VM starts from; the default image is built first when there is none."""
    name = image or settings.image
    if image is None and not any(m.name == name for m in images.list_images(settings)):
        say(f"no {name} image yet: building it first")
        images.build(name, progress=say, settings=settings)
    return images.resolve(name, version, settings)


def domain_spec(
    *,
    name: str,
    instance_id: str,
    metadata: domains.FluidMetadata,
    manifest: images.ImageManifest,
    disk: Path,
    console_log: Path,
    ssh_port: int,
    network: str,
    ca: CertificateAuthority,
    settings: FluidSettings,
    kernel: Path | None,
    initrd: Path | None,
    seed: Path | None,
    disk_cache: str | None = None,
    listen: str = "127.0.0.1",
) -> domains.DomainSpec:
    """The domain of a fluid VM booting from `disk` (and `kernel`, when the image has one)."""
    extra = {"disk_cache": disk_cache} if disk_cache else {}
    return domains.DomainSpec(
        name=name,
        metadata=metadata,
        domain_type=domain_type(settings),  # type: ignore[arg-type]
        memory_mib=settings.memory_mib,
        vcpus=settings.vcpus,
        tb_cache_mib=settings.tb_cache_mib,
        disk_path=disk,
        console_log=console_log,
        ssh_port=ssh_port,
        network=network,
        listen=listen,
        kernel=kernel,
        initrd=initrd,
        cmdline=domains.kernel_cmdline(manifest.cmdline or "", instance_id, ca.public_key_line())
        if manifest.kernel
        else None,
        seed_iso=seed,
        **extra,
    )


def seed_iso(instance_id: str, ca: CertificateAuthority, iso: Path) -> Path:
    """A cloud-init NoCloud seed at `iso` that makes an imported image trust fluid's CA."""
    user_data = f"""#cloud-config
disable_root: false
ssh_pwauth: false
ssh_deletekeys: true
ssh_genkeytypes: [ed25519]
write_files:
  - path: /etc/ssh/fluid_user_ca.pub
    content: "{ca.public_key_line()}"
  - path: /etc/ssh/fluid_principals
    content: "{principal(instance_id)}"
  - path: /etc/ssh/sshd_config.d/10-fluid.conf
    content: |
      PermitRootLogin prohibit-password
      PasswordAuthentication no
      KbdInteractiveAuthentication no
      TrustedUserCAKeys /etc/ssh/fluid_user_ca.pub
      AuthorizedPrincipalsFile /etc/ssh/fluid_principals
runcmd:
  - [passwd, -l, root]
  - [sh, -c, "systemctl restart ssh || systemctl restart sshd"]
"""
    meta_data = f"instance-id: {instance_id}\nlocal-hostname: {instance_id}\n"
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "user-data").write_text(user_data)
        Path(tmp, "meta-data").write_text(meta_data)
        subprocess.run(
            [
                "genisoimage",
                "-quiet",
                "-output",
                str(iso),
                "-volid",
                "cidata",
                "-joliet",
                "-rock",
                f"{tmp}/user-data",
                f"{tmp}/meta-data",
            ],
            check=True,
            capture_output=True,
        )
    return iso


CONSOLE_TAIL_BYTES = 64 * 1024


def console_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a VM's serial console, for error messages.

    The guest writes its console: only its last 64 KiB are read, and controls are shown, not
    sent, so a lying guest can neither flood the host nor drive the terminal of whoever reads
    the error.
    """
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - CONSOLE_TAIL_BYTES))
            text = f.read(CONSOLE_TAIL_BYTES).decode(errors="replace")
    except OSError:
        return "(no console output)"
    tail = "\n".join(text.replace("\r", "").splitlines()[-lines:])
    return term_text(tail) or "(console is empty)"


def host_key_from_console(path: Path) -> str | None:
    """The SSH host key a guest printed on its serial console (fluid's line or cloud-init's)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    found = HOSTKEY_LINE.findall(text)
    if found:
        return found[-1]
    block = text.split("-----BEGIN SSH HOST KEY KEYS-----")
    if len(block) > 1:
        m = CLOUD_INIT_KEY.search(block[-1].split("-----END SSH HOST KEY KEYS-----")[0])
        return m.group(1) if m else None
    return None


def wait_for_ssh(
    machine: Machine,
    dom: libvirt.virDomain,
    settings: FluidSettings,
    *,
    timeout: float | None = None,
) -> str:
    """Wait until the VM's SSH on 127.0.0.1 runs a command; return its host key.

    A known `machine.host_key` is pinned instead of learned from the console, for guests
    that print it only at their first boot (cloud-init).
    """
    deadline = time.monotonic() + (timeout or settings.ready_timeout_s)
    ca = authority(settings)
    host_key = machine.host_key
    console = machine.console_log
    while time.monotonic() < deadline:
        if not dom.isActive():
            raise machine.kind.not_ready(
                f"{machine.label} stopped while booting; console:\n{console_tail(console)}"
            )
        host_key = host_key or host_key_from_console(console)
        if host_key:
            creds = ca.issue(
                principal(machine.instance_id), timedelta(minutes=settings.cert_ttl_minutes)
            )
            if ssh.ping(machine.address, machine.ssh_port, creds, host_key):
                return host_key
        time.sleep(0.5)
    raise machine.kind.not_ready(
        f"{machine.label} did not answer SSH on {machine.address}:{machine.ssh_port} within "
        f"{timeout or settings.ready_timeout_s:.0f} s (FLUID_READY_TIMEOUT_S); "
        f"console tail:\n{console_tail(console)}"
    )


def boot(
    machine: Machine,
    dom: libvirt.virDomain,
    settings: FluidSettings,
    say: Progress,
    *,
    hint: str = "",
    timeout: float | None = None,
) -> str:
    """Start a defined VM behind the network guard and wait for SSH; return its host key."""
    # The guard may be gone (a host reboot) or this may follow a long disk copy.
    firewall.ensure_guard(settings)
    try:
        dom.create()
    except libvirt.libvirtError as e:
        raise machine.kind.not_ready(
            f"libvirt could not start {machine.label}: {e.get_error_message()}{hint}"
        ) from e
    say(f"{machine.label}: VM started on {machine.address}:{machine.ssh_port}, waiting for SSH")
    return wait_for_ssh(machine, dom, settings, timeout=timeout)


def guest(
    machine: Machine,
    settings: FluidSettings,
    *,
    valid_since: datetime | None = None,
) -> ssh.GuestConnection:
    """An SSH connection to a running VM with a fresh short-lived certificate.

    `valid_since` backdates the certificate for a guest whose clock is behind (see ssh_ca).
    """
    if not machine.host_key:
        raise machine.kind.not_running(
            f"{machine.label} never finished booting; "
            f"`{machine.kind.command} destroy {machine.name}` and create it again"
        )
    creds = authority(settings).issue(
        principal(machine.instance_id),
        timedelta(minutes=settings.cert_ttl_minutes),
        valid_since=valid_since,
    )
    try:
        return ssh.GuestConnection(machine.address, machine.ssh_port, creds, machine.host_key)
    except SSHError as e:
        with connection(settings) as conn:
            if domain_state(lookup(conn, machine.domain_name)) != "running":
                raise machine.kind.not_running(
                    f"{machine.label} is not running; "
                    f"`{machine.kind.command} start {machine.name}` it"
                ) from e
        raise


def run(
    machine: Machine,
    command: str,
    *,
    settings: FluidSettings,
    timeout: float = 300.0,
    output_cap: int = 30_000,
    actor: str | None = None,
    valid_since: datetime | None = None,
) -> ssh.CommandResult:
    """Run a shell command as root in the VM and record it, also when it times out."""
    with guest(machine, settings, valid_since=valid_since) as g:
        try:
            result = g.run(command, timeout=timeout, output_cap=output_cap)
        except CommandTimeout as e:
            if e.result is not None:
                record_command(machine.instance_id, e.result, actor, settings, machine.production)
            raise
    record_command(machine.instance_id, result, actor, settings, machine.production)
    return result


def record_command(
    instance_id: str,
    r: ssh.CommandResult,
    actor: str | None,
    settings: FluidSettings,
    production: str | None = None,
) -> None:
    """Record a command run in a guest (a sandbox, or production VM `production`): its
    CommandRecord and its audit event."""
    actor = audit.default_actor(actor)
    with store.session(settings) as s:
        s.add(
            CommandRecord(
                sandbox_id=instance_id,
                command=r.command,
                exit_status=r.exit_status,
                stdout=r.stdout_text,
                stderr=r.stderr_text,
                timed_out=r.timed_out,
                started_at=r.started_at,
                ended_at=r.ended_at,
                actor=actor,
            )
        )
    audit.record_command(
        r, actor=actor, sandbox_id=instance_id, production=production, settings=settings
    )


def power_off(machine: Machine, dom: libvirt.virDomain | None, settings: FluidSettings) -> None:
    """Power a VM off after flushing its disk; its disk and records stay."""
    if dom is None or not dom.isActive():
        return
    try:  # flush the guest's page cache so the disk is consistent when powered off
        with guest(machine, settings) as g:
            g.run("sync", timeout=30)
    except (FluidError, OSError):
        pass
    dom.destroy()


def state(domain_name: str, settings: FluidSettings) -> str:
    """A VM's state now: running, paused, shut off, or missing."""
    with connection(settings) as conn:
        return domain_state(lookup(conn, domain_name))


def start(
    machine: Machine, settings: FluidSettings, say: Progress, *, hint: str = ""
) -> str | None:
    """Start a stopped VM and wait for SSH: its host key, or None when it was running."""
    with connection(settings) as conn:
        dom = lookup(conn, machine.domain_name)
        if dom is None:
            raise machine.kind.missing(
                f"{machine.label} has no libvirt domain {machine.domain_name} any more; "
                f"`{machine.kind.command} destroy {machine.name}` and create it again"
            )
        if dom.isActive():
            return None
        return boot(machine, dom, settings, say, hint=hint)


def stop(machine: Machine, settings: FluidSettings) -> None:
    """Power a VM off after flushing its disk; its disk and records stay."""
    with connection(settings) as conn:
        power_off(machine, lookup(conn, machine.domain_name), settings)
