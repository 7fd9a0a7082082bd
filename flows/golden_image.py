"""The golden-image flow: build the image, or rebuild it to pick up Debian's updates."""

from __future__ import annotations

from prefect import flow, get_run_logger

from infra.host.images import ImageManifest
from tasks.image import build_image


@flow(name="golden-image")
def golden_image(name: str | None = None, refresh: bool = False) -> ImageManifest:
    """Build `name` (default FLUID_IMAGE); `refresh` rebuilds even when nothing changed.

    Older versions no sandbox rests on any more are removed by the build.
    """
    m = build_image(name, refresh)
    get_run_logger().info("image %s %s at %s", m.name, m.version, m.disk_path)
    return m
