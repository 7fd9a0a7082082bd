"""libvirt domain XML for fluid's VMs, and fluid's own data kept in each domain's <metadata>."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

import libvirt
from pydantic import BaseModel

METADATA_NS = "https://fluid.dev/xmlns/domain/1"
METADATA_KEY = "fluid"


class FluidMetadata(BaseModel):
    """What fluid stores in a domain so it can be recognised without the database."""

    kind: Literal["sandbox", "production", "pool"]
    id: str
    agent_id: str | None = None
    expires_at: datetime | None = None
    created_at: datetime
    # Which fluid database holds this VM's record (FluidSettings.store_id): a janitor reaps
    # only the orphans of its own database, never those of another FLUID_HOME on this host.
    store: str | None = None
    # Which fluid host made it (infra/host/identity.py): hosts that share one libvirt (the
    # cluster demo's) and one database still reap only their own.
    host: str | None = None

    def is_of(self, store: str, host: str) -> bool:
        """Whether this VM belongs to database `store` and host `host` (an older VM, with no
        host recorded, to every host of its database)."""
        return self.store == store and self.host in (None, host)


class DomainSpec(BaseModel):
    """Everything needed to render one VM's domain XML."""

    name: str
    metadata: FluidMetadata
    domain_type: Literal["kvm", "qemu"]
    memory_mib: int
    vcpus: int
    tb_cache_mib: int
    disk_path: Path
    console_log: Path
    ssh_port: int
    network: Literal["nat", "isolated"]
    # Where the SSH forward listens: 127.0.0.1 but for a production VM other hosts reach.
    listen: str = "127.0.0.1"
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    seed_iso: Path | None = None
    disk_cache: Literal["unsafe", "none", "writeback"] = "unsafe"


def kernel_cmdline(base: str, instance_id: str, ca_public_line: str) -> str:
    """The kernel command line that tells a fluid guest who it is and which CA to trust.

    The guest's fluid-instance service reads fluid.sandbox (its principal is fluid-<id>) and
    fluid.ca at every boot; systemd takes the machine-id and hostname from here.
    """
    blob = ca_public_line.split()[1]
    return (
        f"{base} systemd.machine_id={uuid.uuid4().hex} systemd.hostname={instance_id} "
        f"fluid.sandbox={instance_id} fluid.ca={blob}"
    )


def _metadata_xml(m: FluidMetadata) -> str:
    fields = "".join(
        f"<{k}>{escape(v.isoformat() if isinstance(v, datetime) else str(v))}</{k}>"
        for k, v in m.model_dump().items()
        if v is not None
    )
    return f'<instance xmlns="{METADATA_NS}">{fields}</instance>'


def _netdev(ssh_port: int, network: str, listen: str = "127.0.0.1") -> str:
    netdev = f"user,id=n0,hostfwd=tcp:{listen}:{ssh_port}-:22"
    if network == "isolated":
        # restrict=on: no route out, no host services; only the forward comes in.
        netdev += ",restrict=on"
    return netdev


def render(spec: DomainSpec) -> str:
    """The domain XML: direct kernel boot, SLIRP NIC with SSH on a 127.0.0.1 forward."""
    netdev = _netdev(spec.ssh_port, spec.network, spec.listen)
    boot = (
        f"<kernel>{escape(str(spec.kernel))}</kernel><initrd>{escape(str(spec.initrd))}</initrd>"
        f"<cmdline>{escape(spec.cmdline or '')}</cmdline>"
        if spec.kernel
        else "<boot dev='hd'/>"
    )
    features = "<acpi/><apic/>"
    if spec.domain_type == "qemu":
        features += f"<tcg><tb-cache unit='MiB'>{spec.tb_cache_mib}</tb-cache></tcg>"
    # The seed is an IDE cdrom: Debian's cloud kernel has ata_piix but no AHCI (SATA) driver.
    seed = (
        "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
        f"<source file={quoteattr(str(spec.seed_iso))}/><target dev='hdc' bus='ide'/>"
        "<readonly/></disk>"
        if spec.seed_iso
        else ""
    )
    return f"""<domain type='{spec.domain_type}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{escape(spec.name)}</name>
  <metadata>{_metadata_xml(spec.metadata)}</metadata>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>{spec.vcpus}</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>
  <features>{features}</features>
  {"<cpu mode='host-passthrough'/>" if spec.domain_type == "kvm" else ""}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='{spec.disk_cache}' discard='unmap'/>
      <source file={quoteattr(str(spec.disk_path))}/>
      <target dev='vda' bus='virtio'/>
    </disk>
    {seed}
    <controller type='usb' model='none'/>
    <serial type='pty'>
      <log file={quoteattr(str(spec.console_log))} append='off'/><target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/><qemu:arg value={quoteattr(netdev)}/>
    <qemu:arg value='-device'/><qemu:arg value='virtio-net-pci,netdev=n0,bus=pci.0,addr=0x10'/>
  </qemu:commandline>
</domain>"""


QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def retarget(
    xml: str,
    *,
    metadata: FluidMetadata,
    disk_path: Path,
    console_log: Path,
    ssh_port: int,
    network: Literal["nat", "isolated"],
    cmdline: str | None = None,
) -> str:
    """A saved VM's domain XML pointed at another disk, console log, SSH port and network.

    libvirt accepts these changes when restoring a saved state (they are not guest-visible);
    the name and UUID must stay. `cmdline` replaces the kernel command line, which only takes
    effect at the next cold boot.
    """
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.fromstring(xml)
    disk = root.find("./devices/disk[@device='disk']/source")
    log = root.find("./devices/serial/log")
    if disk is None or log is None:
        raise ValueError("saved domain XML has no disk source or serial log")
    disk.set("file", str(disk_path))
    log.set("file", str(console_log))
    args = root.findall(f"./{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")
    netdev = [a for a in args if "hostfwd=" in (a.get("value") or "")]
    if len(netdev) != 1:
        raise ValueError("saved domain XML has no user-mode network with an SSH forward")
    netdev[0].set("value", _netdev(ssh_port, network))
    meta = root.find("./metadata")
    if meta is None:
        meta = ET.SubElement(root, "metadata")
    for child in list(meta):
        if child.tag.startswith(f"{{{METADATA_NS}}}"):
            meta.remove(child)
    meta.append(ET.fromstring(_metadata_xml(metadata)))
    if cmdline is not None:
        node = root.find("./os/cmdline")
        if node is None:
            raise ValueError("saved domain XML boots no kernel directly; no command line to set")
        node.text = cmdline
    return ET.tostring(root, encoding="unicode")


def write_metadata(dom: libvirt.virDomain, meta: FluidMetadata) -> None:
    """Replace fluid's metadata of a defined domain (persistent and, if running, live)."""
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if dom.isActive():
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    dom.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT, _metadata_xml(meta), METADATA_KEY, METADATA_NS, flags
    )


def read_metadata(dom: libvirt.virDomain) -> FluidMetadata | None:
    """fluid's metadata of a domain, or None for a domain fluid did not make."""
    try:
        raw = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
    except libvirt.libvirtError:
        return None
    root = ET.fromstring(raw)
    values = {child.tag.split("}")[-1]: child.text for child in root}
    try:
        return FluidMetadata.model_validate(values)
    except ValueError:
        return None


HOSTFWD_PORT = re.compile(r"hostfwd=tcp:[0-9.]+:(\d+)-")


def forwarded_ports(dom: libvirt.virDomain) -> set[int]:
    """The ports a fluid VM forwards to its SSH (none once it is gone)."""
    try:
        xml = dom.XMLDesc(0)
    except libvirt.libvirtError:  # a transient domain (a warm slot being saved) just vanished
        return set()
    return {int(p) for p in HOSTFWD_PORT.findall(xml)}


def fluid_domains(
    conn: libvirt.virConnect, kind: str | None = None
) -> list[tuple[libvirt.virDomain, FluidMetadata]]:
    """Every domain carrying fluid metadata (of `kind`, if given)."""
    out = []
    for dom in conn.listAllDomains():
        meta = read_metadata(dom)
        if meta and (kind is None or meta.kind == kind):
            out.append((dom, meta))
    return out
