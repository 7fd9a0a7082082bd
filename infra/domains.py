"""libvirt domain XML for fluid's VMs, and fluid's own data kept in each domain's <metadata>."""

from __future__ import annotations

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
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    seed_iso: Path | None = None
    disk_cache: Literal["unsafe", "none", "writeback"] = "unsafe"


def _metadata_xml(m: FluidMetadata) -> str:
    fields = "".join(
        f"<{k}>{escape(v.isoformat() if isinstance(v, datetime) else str(v))}</{k}>"
        for k, v in m.model_dump().items()
        if v is not None
    )
    return f'<instance xmlns="{METADATA_NS}">{fields}</instance>'


def render(spec: DomainSpec) -> str:
    """The domain XML: direct kernel boot, SLIRP NIC with SSH on a 127.0.0.1 forward."""
    netdev = f"user,id=n0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22"
    if spec.network == "isolated":
        # restrict=on: no route out, no host services; only the forward comes in.
        netdev += ",restrict=on"
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
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/><qemu:arg value={quoteattr(netdev)}/>
    <qemu:arg value='-device'/><qemu:arg value='virtio-net-pci,netdev=n0,bus=pci.0,addr=0x10'/>
  </qemu:commandline>
</domain>"""


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
