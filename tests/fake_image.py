"""Tiny stand-ins for golden images and for the hosts that hold them, for tests without VMs.

A fake image version is what infra/host/images.py leaves after a build: a version folder with
a disk, a kernel and an initrd (a few bytes each, not bootable) and its manifest.json. A fake
host is a FluidSettings of its own (host id, home, storage) on one database shared by all.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from infra.host import images
from infra.host.images import ImageManifest
from infra.settings import FluidSettings

FAKE_IMAGE = "fake-os"


def host_settings(host: str, tmp_path: Path) -> FluidSettings:
    """Host `host`'s settings: its own home and storage, the one shared SQLite database."""
    return FluidSettings(
        host_id=host,
        home=tmp_path / host / "home",
        storage_dir=tmp_path / host / "storage",
        database_url=f"sqlite:///{tmp_path / 'shared.db'}",
    )


def make_image(
    settings: FluidSettings,
    version: str = "v1",
    *,
    name: str = FAKE_IMAGE,
    disk: bytes = b"QFI\xfb fake disk " * 1000,
    kernel: bytes = b"fake kernel",
    initrd: bytes = b"fake initrd",
    built_at: datetime | None = None,
) -> ImageManifest:
    """A built image version `version` of `name` on the host of `settings`, as a build writes
    it (parts read-only, manifest with the disk's sha256)."""
    directory = settings.images_dir / name / version
    directory.mkdir(parents=True)
    for file, data in (("disk.qcow2", disk), ("vmlinuz", kernel), ("initrd.img", initrd)):
        (directory / file).write_bytes(data)
        (directory / file).chmod(0o444)
    manifest = ImageManifest(
        name=name,
        version=version,
        source="debootstrap",
        sha256=images.file_sha256(directory / "disk.qcow2"),
        size_bytes=len(disk),
        kernel="vmlinuz",
        initrd="initrd.img",
        kernel_version="6.1.0-fake",
        cmdline=images.DIRECT_BOOT_CMDLINE,
        guest_agent=True,
        built_at=built_at or datetime.now(UTC),
    )
    images.write_manifest(directory, manifest)
    return manifest.model_copy(update={"directory": directory})


def flip_a_byte(path: Path, offset: int = 5) -> None:
    """Corrupt the file at `path` in place: one byte changed, its size unchanged."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    path.chmod(0o444)
