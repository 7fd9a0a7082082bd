"""The image-sync flow: bring a published image onto the host whose worker runs it.

Run on each host's own work queue (one run per host), e.g.
`run_deployment("image-sync/image-sync", parameters=…, work_queue_name="host-<id>")`: the copy
lands on that worker's host, verified part by part against the cluster's catalog before any
sandbox can use it; a corrupted copy fails the run with ImageCorrupt and leaves nothing.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from infra.host.image_sync import Synced
from tasks.image import sync_image


@flow(name="image-sync")
def image_sync(name: str, source: str, version: str | None = None) -> Synced:
    """Copy image `name` at global `version` (default: the newest published) from the folder
    `source` (the publishing host's image folder, as this host mounts it) to this host."""
    done = sync_image(name, version, source)
    state = "copied and verified" if done.copied else "already held"
    get_run_logger().info("image %s %s %s at %s", done.name, done.version, state, done.directory)
    return done
