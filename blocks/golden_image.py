"""Prefect block naming the golden image (and optionally the version) sandboxes clone."""

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import Field

from infra.host import images
from infra.host.images import ImageManifest
from infra.settings import FluidSettings


class GoldenImage(Block):
    """A golden image by name, pinned to one version or following the newest."""

    _block_type_name: ClassVar[str] = "Golden Image"
    _description: ClassVar[str] = (
        "A fluid golden image that sandboxes are cloned from: its name and, optionally, a "
        "pinned version (empty means the newest complete version)."
    )
    _logo_url: ClassVar[None] = None

    name: str = Field(default="debian-12", description="Image name, e.g. debian-12.")
    version: str | None = Field(
        default=None, description="Version such as v3; empty follows the newest version."
    )

    def manifest(self, settings: FluidSettings | None = None) -> ImageManifest:
        """The image version this block names; ImageNotFound if it is not on the host."""
        return images.resolve(self.name, self.version, settings)
