"""Golden images: cached builds, manifests, direct-boot kernels, imports and listing."""

from __future__ import annotations

import contextlib
import json
import subprocess

import pytest

from infra.errors import ImageBuildError, ImageNotFound
from infra.host import images
from tests.conftest import fluid, fluid_json


def test_a_build_with_the_same_inputs_is_skipped(golden_image, settings):
    r = fluid("image", "build")
    assert b"up to date" in r.stderr
    assert r.stdout.decode().split()[:2] == [golden_image.name, golden_image.version]


def test_a_build_removes_what_a_killed_build_left_half_made(golden_image, settings):
    # A SIGKILLed or SIGTERMed build cannot clean up after itself; the next one does.
    half_made = golden_image.directory.parent / f".{golden_image.version}.building-killed"
    (half_made / "rootfs" / "etc").mkdir(parents=True)
    (half_made / "rootfs" / "etc" / "hostname").write_text("sandbox\n")
    r = fluid("image", "build")
    assert b"left by a build that was killed" in r.stderr
    assert not half_made.exists()
    assert golden_image.disk_path.exists()


def test_the_manifest_describes_the_image(golden_image):
    m = json.loads((golden_image.directory / "manifest.json").read_text())
    assert m["name"] == "debian-12" and m["source"] == "debootstrap"
    assert m["sha256"] == images.file_sha256(golden_image.disk_path)
    assert m["kernel_version"] and m["built_at"]
    pkgs = {p.split("=")[0] for p in m["packages"]}
    assert {"openssh-server", "python3", "sudo", "tmux", "apt", "systemd"} <= pkgs
    # the image carries its own kernel for direct boot, from the guest's own packages
    assert f"linux-image-{m['kernel_version']}" in pkgs
    assert golden_image.kernel_path.stat().st_size > 1_000_000
    assert golden_image.initrd_path.exists()
    # images are immutable
    assert golden_image.disk_path.stat().st_mode & 0o222 == 0


def test_image_list_shows_versions(golden_image):
    listed = fluid_json("image", "list")["images"]
    assert {"name": golden_image.name, "version": golden_image.version} in [
        {"name": i["name"], "version": i["version"]} for i in listed
    ]


def test_an_existing_disk_is_imported_as_a_new_image(tmp_path, settings):
    disk = tmp_path / "cloud.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    m = images.import_image(disk, "imported-test", progress=None, settings=settings)
    try:
        assert (m.name, m.version, m.source, m.cloud_init) == (
            "imported-test",
            "v1",
            "import",
            True,
        )
        assert images.resolve("imported-test", settings=settings).sha256 == m.sha256
        m2 = images.import_image(disk, "imported-test", progress=None, settings=settings)
        assert m2.version == "v2"
    finally:
        for v in ("v1", "v2"):
            with contextlib.suppress(ImageNotFound):
                images.delete("imported-test", v, settings)
    with pytest.raises(ImageNotFound):
        images.resolve("imported-test", settings=settings)


def test_importing_something_that_is_not_a_disk_fails_clearly(tmp_path, settings):
    junk = tmp_path / "junk.qcow2"
    junk.write_text("not a disk")
    # qemu-img reads any file as raw; a missing file is the clear failure
    with pytest.raises(ImageNotFound, match="no such file"):
        images.import_image(tmp_path / "missing.qcow2", "x", progress=None, settings=settings)
    with pytest.raises(ImageBuildError):
        images._qemu_img_info(tmp_path)
