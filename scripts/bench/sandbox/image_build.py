"""bench_sandbox's optional --build row: a full image build into the run's own storage."""

from __future__ import annotations

from pathlib import Path

from bench.results import BenchError, Results, SetupError, log
from bench.sandbox.context import Bench
from infra.errors import FluidError
from infra.host import images
from infra.settings import FluidSettings

REAL_DEBOOTSTRAP_CACHE = Path("/var/lib/fluid/cache/debootstrap")


def bench_build(res: Results, b: Bench) -> None:
    """A full image build into the run's tree, the debootstrap cache borrowed."""
    storage = b.root / "storage"
    (storage / "cache").mkdir(parents=True)
    if not REAL_DEBOOTSTRAP_CACHE.is_dir():
        raise SetupError(
            f"{REAL_DEBOOTSTRAP_CACHE} does not exist: build the golden image once "
            "(`fluid image build`) or leave out --build"
        )
    (storage / "cache" / "debootstrap").symlink_to(REAL_DEBOOTSTRAP_CACHE)
    base = b.settings
    settings = FluidSettings(
        home=b.root / "build-home",
        storage_dir=storage,
        mirror=base.mirror,
        suite=base.suite,
        image=base.image,
        database_url=None,
        ca_private_key=None,
    )
    log(f"image build into {storage}; a few minutes under load")

    def build() -> images.ImageManifest:
        try:
            return images.build(
                base.image, force=True, settings=settings, progress=lambda m: log(f"  {m}")
            )
        except FluidError as e:
            raise BenchError(f"image build failed: {e}") from e

    res.timed("image build", "s", build)
