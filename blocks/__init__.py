"""Prefect blocks that configure fluid: the libvirt host, the golden image, the SSH CA and the
production hosts changes are applied to."""

from blocks.golden_image import GoldenImage
from blocks.libvirt_host import LibvirtHost
from blocks.production_target import ProductionHost, ProductionTarget
from blocks.ssh_authority import SSHAuthority

__all__ = ["GoldenImage", "LibvirtHost", "ProductionHost", "ProductionTarget", "SSHAuthority"]
