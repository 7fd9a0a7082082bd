"""The Prefect tasks over golden images: build a version, copy a published one to this host."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from infra.host import image_sync, images
from infra.host.image_sync import Synced
from infra.host.images import ImageManifest
from infra.settings import get_settings


@task(name="build image", cache_policy=NO_CACHE, persist_result=False)
def build_image(name: str | None, refresh: bool) -> ImageManifest:
    """debootstrap a new version (when the inputs changed, or always with `refresh`)."""
    logger = get_run_logger()
    return images.build(name, force=refresh, progress=logger.info, settings=get_settings())


@task(name="sync image", cache_policy=NO_CACHE, persist_result=False)
def sync_image(name: str, version: str | None, source: str) -> Synced:
    """Copy published image `name` from `source` to this host, verified before use."""
    logger = get_run_logger()
    return image_sync.sync(
        name, version, source=Path(source), progress=logger.info, settings=get_settings()
    )
