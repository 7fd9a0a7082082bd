"""The golden-image flow: build the image, or rebuild it to pick up Debian's updates."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from infra.host import images
from infra.host.images import ImageManifest
from infra.settings import get_settings


@task(name="build image", cache_policy=NO_CACHE, persist_result=False)
def build_image(name: str | None, refresh: bool) -> ImageManifest:
    """debootstrap a new version (when the inputs changed, or always with `refresh`)."""
    logger = get_run_logger()
    return images.build(name, force=refresh, progress=logger.info, settings=get_settings())


@flow(name="golden-image")
def golden_image(name: str | None = None, refresh: bool = False) -> ImageManifest:
    """Build `name` (default FLUID_IMAGE); `refresh` rebuilds even when nothing changed.

    Older versions no sandbox rests on any more are removed by the build.
    """
    m = build_image(name, refresh)
    get_run_logger().info("image %s %s at %s", m.name, m.version, m.disk_path)
    return m
