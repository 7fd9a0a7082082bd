"""Prefect blocks that configure fluid: the libvirt host, the golden image and the SSH CA."""

from blocks.golden_image import GoldenImage
from blocks.libvirt_host import LibvirtHost
from blocks.ssh_authority import SSHAuthority

__all__ = ["GoldenImage", "LibvirtHost", "SSHAuthority"]
