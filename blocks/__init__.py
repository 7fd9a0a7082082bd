"""Prefect blocks that configure fluid: the libvirt host, the golden image, the SSH CA, the
production hosts changes are applied to, the agents' guardrails and LLM endpoints."""

from blocks.golden_image import GoldenImage
from blocks.guardrails import GuardrailsBlock
from blocks.libvirt_host import LibvirtHost
from blocks.llm import LLMBlock
from blocks.production_target import ProductionHost, ProductionTarget
from blocks.ssh_authority import SSHAuthority

__all__ = [
    "GoldenImage",
    "GuardrailsBlock",
    "LibvirtHost",
    "LLMBlock",
    "ProductionHost",
    "ProductionTarget",
    "SSHAuthority",
]
