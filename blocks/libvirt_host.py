"""Prefect block describing the libvirt host fluid's sandboxes run on."""

from pathlib import Path
from typing import ClassVar, Literal

from prefect.blocks.core import Block
from pydantic import Field

from infra.settings import FluidSettings


class LibvirtHost(Block):
    """Where and how sandbox VMs run: libvirt URI, accelerator, storage and VM size.

    `settings()` turns the block into the FluidSettings every infra function takes.
    """

    _block_type_name: ClassVar[str] = "Libvirt Host"
    _description: ClassVar[str] = (
        "The libvirt host fluid's sandbox VMs run on: connection URI, KVM or TCG, where "
        "images and disks live, and each VM's memory, vCPUs and network mode."
    )
    _logo_url: ClassVar[None] = None

    uri: str = Field(default="qemu:///system", description="libvirt connection URI.")
    domain_type: Literal["auto", "kvm", "qemu"] = Field(
        default="auto", description="kvm, qemu (TCG emulation) or auto (kvm when usable)."
    )
    storage_dir: str = Field(
        default="/var/lib/fluid",
        description="Images, disks and console logs; QEMU's user must be able to traverse it.",
    )
    # Same bounds as FluidSettings, so a bad block fails when saved rather than when used.
    memory_mib: int = Field(default=512, ge=256, description="Memory per sandbox VM in MiB.")
    vcpus: int = Field(default=1, ge=1, description="Virtual CPUs per sandbox VM.")
    network: Literal["nat", "isolated"] = Field(
        default="nat", description="nat (outbound access) or isolated (no network at all)."
    )

    def settings(self, base: FluidSettings | None = None) -> FluidSettings:
        """Return `base` (default: FluidSettings() from the environment) with this host's values."""
        base = base if base is not None else FluidSettings()
        overrides = {
            "libvirt_uri": self.uri,
            "domain_type": self.domain_type,
            "storage_dir": Path(self.storage_dir),
            "memory_mib": self.memory_mib,
            "vcpus": self.vcpus,
            "network": self.network,
        }
        # model_validate re-checks the merged values but, unlike FluidSettings(...), does not
        # read FLUID_* variables again, so explicit fields of `base` survive.
        return FluidSettings.model_validate(base.model_dump() | overrides)
