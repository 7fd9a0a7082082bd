"""The Prefect task that builds a golden image version."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from infra.host import images
from infra.host.images import ImageManifest
from infra.settings import get_settings


@task(name="build image", cache_policy=NO_CACHE, persist_result=False)
def build_image(name: str | None, refresh: bool) -> ImageManifest:
    """debootstrap a new version (when the inputs changed, or always with `refresh`)."""
    logger = get_run_logger()
    return images.build(name, force=refresh, progress=logger.info, settings=get_settings())
