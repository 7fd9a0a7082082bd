"""Images are content-addressed across hosts: a version published on one host has one global
version everywhere, is copied to another host verified part by part before it can be used, and
a corrupted copy is refused and leaves nothing usable behind.

No VMs: two "hosts" are two settings (own host id, home and storage) on one shared SQLite
store, and the images are a few bytes standing in for disk, kernel and initrd.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.errors import ImageCorrupt, ImageNotFound
from infra.host import image_sync, images
from infra.records import image_catalog
from infra.records.image_catalog import CatalogImage
from infra.settings import FluidSettings
from tests.conftest import fresh_postgres_database
from tests.fake_image import FAKE_IMAGE, flip_a_byte, host_settings, make_image


@pytest.fixture
def host_a(tmp_path: Path) -> FluidSettings:
    return host_settings("host-a", tmp_path)


@pytest.fixture
def host_b(tmp_path: Path) -> FluidSettings:
    return host_settings("host-b", tmp_path)


def usable_versions(settings: FluidSettings, name: str = FAKE_IMAGE) -> list[str]:
    return [m.version for m in images.list_images(settings) if m.name == name]


def left_in_images(settings: FluidSettings, name: str = FAKE_IMAGE) -> list[str]:
    """Every folder under the host's image `name` (hidden work trees included)."""
    d = settings.images_dir / name
    return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.exists() else []


def test_an_image_published_on_one_host_is_copied_verified_to_another(host_a, host_b):
    built = make_image(host_a, "v3")
    entry = image_sync.publish(FAKE_IMAGE, settings=host_a)

    assert len(entry.version) == 16 and entry.version == image_sync.content_address(entry.parts)
    assert (entry.origin_version, entry.published_by) == ("v3", "host-a")
    assert {p.file: p.sha256 for p in entry.parts} == {
        f: images.file_sha256(built.directory / f) for f in ("disk.qcow2", "vmlinuz", "initrd.img")
    }

    done = image_sync.sync(FAKE_IMAGE, source=built.directory, settings=host_b)
    assert done.copied and done.version == entry.version

    copy = images.resolve(FAKE_IMAGE, settings=host_b)
    assert (copy.version, copy.content_version) == (entry.version, entry.version)
    for f in ("disk.qcow2", "vmlinuz", "initrd.img"):
        assert (copy.directory / f).read_bytes() == (built.directory / f).read_bytes()
        assert (copy.directory / f).stat().st_mode & 0o222 == 0  # images are immutable
    # it boots as the original does
    assert (copy.kernel, copy.initrd, copy.cmdline) == (built.kernel, built.initrd, built.cmdline)
    # the publisher resolves the global version to its own v3
    assert images.resolve(FAKE_IMAGE, entry.version, host_a).version == "v3"
    assert image_catalog.holders(FAKE_IMAGE, entry.version, host_b) == ["host-a", "host-b"]
    image_sync.verify(FAKE_IMAGE, entry.version, settings=host_b)


def test_the_same_bytes_have_the_same_global_version_on_every_host(host_a, host_b):
    make_image(host_a, "v3")
    make_image(host_b, "v1")
    on_a = image_sync.publish(FAKE_IMAGE, settings=host_a)
    on_b = image_sync.publish(FAKE_IMAGE, settings=host_b)

    assert on_a.version == on_b.version
    assert [e.published_by for e in image_catalog.entries(FAKE_IMAGE, host_a)] == ["host-a"]
    assert image_catalog.holders(FAKE_IMAGE, on_a.version, host_a) == ["host-a", "host-b"]


def test_other_bytes_have_another_global_version(host_a):
    make_image(host_a, "v1", kernel=b"kernel one")
    make_image(host_a, "v2", kernel=b"kernel two")
    first = image_sync.publish(FAKE_IMAGE, "v1", settings=host_a)
    second = image_sync.publish(FAKE_IMAGE, settings=host_a)

    assert first.version != second.version
    assert image_sync.catalog_entry(FAKE_IMAGE, settings=host_a).version == second.version


def test_publishing_again_changes_nothing(host_a):
    make_image(host_a)
    first = image_sync.publish(FAKE_IMAGE, settings=host_a)
    again = image_sync.publish(FAKE_IMAGE, "v1", settings=host_a)

    assert again == first
    assert len(image_catalog.entries(settings=host_a)) == 1


def test_a_corrupted_part_is_refused_and_nothing_usable_is_left(host_a, host_b):
    built = make_image(host_a)
    entry = image_sync.publish(FAKE_IMAGE, settings=host_a)
    want = images.file_sha256(built.directory / "vmlinuz")
    flip_a_byte(built.directory / "vmlinuz")
    got = images.file_sha256(built.directory / "vmlinuz")

    with pytest.raises(ImageCorrupt, match=f"part vmlinuz is sha256 {got}.*sha256 {want}") as e:
        image_sync.sync(FAKE_IMAGE, source=built.directory, settings=host_b)
    assert (e.value.part, e.value.expected, e.value.actual) == ("vmlinuz", want, got)

    assert left_in_images(host_b) == []
    with pytest.raises(ImageNotFound):
        images.resolve(FAKE_IMAGE, entry.version, host_b)
    assert image_catalog.holders(FAKE_IMAGE, entry.version, host_b) == ["host-a"]


def test_syncing_a_held_copy_again_does_nothing(host_a, host_b):
    built = make_image(host_a)
    image_sync.publish(FAKE_IMAGE, settings=host_a)
    first = image_sync.sync(FAKE_IMAGE, source=built.directory, settings=host_b)
    inode = (first.directory / "disk.qcow2").stat().st_ino

    again = image_sync.sync(FAKE_IMAGE, source=built.directory, settings=host_b)
    assert (again.copied, again.directory) == (False, first.directory)
    assert (again.directory / "disk.qcow2").stat().st_ino == inode
    # the publisher holds it already: nothing to copy there either, whatever the source says
    assert not image_sync.sync(FAKE_IMAGE, source=Path("/nonexistent"), settings=host_a).copied


def test_the_inventory_says_which_host_holds_which_version(host_a, host_b):
    make_image(host_a, "v1", kernel=b"kernel one")
    old = image_sync.publish(FAKE_IMAGE, settings=host_a)
    new_image = make_image(host_a, "v2", kernel=b"kernel two")
    new = image_sync.publish(FAKE_IMAGE, settings=host_a)
    image_sync.sync(FAKE_IMAGE, source=new_image.directory, settings=host_b)

    held = {(h.host, h.version) for h in image_catalog.held(settings=host_a)}
    assert held == {("host-a", old.version), ("host-a", new.version), ("host-b", new.version)}
    assert [h.version for h in image_catalog.held(host="host-b", settings=host_a)] == [new.version]
    assert image_catalog.holders(FAKE_IMAGE, old.version, host_a) == ["host-a"]


def test_the_source_may_be_the_publishers_images_or_storage_folder(host_a, host_b, tmp_path):
    make_image(host_a, "v2")
    entry = image_sync.publish(FAKE_IMAGE, settings=host_a)
    image_sync.sync(FAKE_IMAGE, source=host_a.storage_dir, settings=host_b)
    assert usable_versions(host_b) == [entry.version]

    host_c = host_settings("host-c", tmp_path)
    image_sync.sync(FAKE_IMAGE, entry.version, source=host_a.images_dir, settings=host_c)
    assert usable_versions(host_c) == [entry.version]


def test_a_source_without_the_image_is_named_and_nothing_is_left(host_a, host_b, tmp_path):
    make_image(host_a)
    image_sync.publish(FAKE_IMAGE, settings=host_a)
    (tmp_path / "empty").mkdir()

    with pytest.raises(ImageNotFound, match=r"holds no copy.*host-a.*fake-os/v1"):
        image_sync.sync(FAKE_IMAGE, source=tmp_path / "empty", settings=host_b)
    assert left_in_images(host_b) == []


def test_an_image_nobody_published_cannot_be_synced(host_a, host_b):
    built = make_image(host_a)
    with pytest.raises(ImageNotFound, match="fluid image publish fake-os"):
        image_sync.sync(FAKE_IMAGE, source=built.directory, settings=host_b)
    with pytest.raises(ImageNotFound, match="version 0123456789abcdef"):
        image_sync.sync(FAKE_IMAGE, "0123456789abcdef", source=built.directory, settings=host_b)


def test_a_local_copy_that_changed_is_refused_by_verify_and_never_used(host_a, host_b):
    built = make_image(host_a)
    entry = image_sync.publish(FAKE_IMAGE, settings=host_a)
    copy = image_sync.sync(FAKE_IMAGE, source=built.directory, settings=host_b)
    flip_a_byte(copy.directory / "disk.qcow2", offset=100)

    with pytest.raises(ImageCorrupt, match="part disk.qcow2.*quarantined") as e:
        image_sync.verify(FAKE_IMAGE, entry.version, settings=host_b)
    assert e.value.part == "disk.qcow2"

    # sandbox creation resolves images: the quarantined copy is not among them
    with pytest.raises(ImageNotFound):
        images.resolve(FAKE_IMAGE, settings=host_b)
    assert image_catalog.holders(FAKE_IMAGE, entry.version, host_b) == ["host-a"]

    # syncing again replaces it with a good copy
    again = image_sync.sync(FAKE_IMAGE, source=built.directory, settings=host_b)
    assert again.copied
    assert images.resolve(FAKE_IMAGE, settings=host_b).version == entry.version
    image_sync.verify(FAKE_IMAGE, settings=host_b)


def test_a_copy_whose_part_is_missing_is_not_held_and_is_copied_again(host_a, host_b):
    built = make_image(host_a)
    image_sync.publish(FAKE_IMAGE, settings=host_a)
    copy = image_sync.sync(FAKE_IMAGE, source=built.directory, settings=host_b)
    (copy.directory / "initrd.img").unlink()

    assert image_sync.sync(FAKE_IMAGE, source=built.directory, settings=host_b).copied
    assert (copy.directory / "initrd.img").read_bytes() == b"fake initrd"


def test_publishing_refuses_a_disk_that_changed_since_it_was_built(host_a):
    built = make_image(host_a)
    flip_a_byte(built.disk_path)

    with pytest.raises(ImageCorrupt, match="part disk.qcow2") as e:
        image_sync.publish(FAKE_IMAGE, settings=host_a)
    assert e.value.expected == built.sha256
    assert image_catalog.entries(settings=host_a) == []
    assert usable_versions(host_a) == []


def test_verify_checks_an_unpublished_image_against_its_manifest(host_a):
    built = make_image(host_a)
    assert image_sync.verify(FAKE_IMAGE, settings=host_a).version == "v1"
    flip_a_byte(built.disk_path)
    with pytest.raises(ImageCorrupt, match="rebuild it"):
        image_sync.verify(FAKE_IMAGE, settings=host_a)
    assert usable_versions(host_a) == []


def test_a_killed_syncs_work_tree_is_never_used_and_is_removed(host_a, host_b):
    built = make_image(host_a)
    entry = image_sync.publish(FAKE_IMAGE, settings=host_a)
    # A sync killed after writing every part: its hidden work tree looks complete.
    half = make_image(host_b, f".{entry.version}.syncing-killed")
    assert usable_versions(host_b) == []

    image_sync.sync(FAKE_IMAGE, source=built.directory, settings=host_b)
    assert not half.directory.exists()
    assert left_in_images(host_b) == [entry.version]


def test_a_catalog_part_named_as_a_path_is_refused(host_a, host_b, tmp_path):
    built = make_image(host_a)
    entry = image_sync.publish(FAKE_IMAGE, settings=host_a)
    forged = entry.parts[0].model_copy(update={"file": "../../../../etc/passwd"})
    image_catalog.add(
        CatalogImage.model_validate(
            entry.model_dump() | {"version": "0000000000000000", "parts": [forged]}
        ),
        host_a,
    )
    with pytest.raises(ImageCorrupt, match="not an image part's file name"):
        image_sync.sync(FAKE_IMAGE, "0000000000000000", source=built.directory, settings=host_b)
    assert left_in_images(host_b) == []


def test_copies_and_local_builds_are_ordered_by_when_they_were_built(host_a, host_b):
    from datetime import UTC, datetime, timedelta

    earlier = datetime.now(UTC) - timedelta(days=1)
    built = make_image(host_a, "v7", built_at=earlier)
    entry = image_sync.publish(FAKE_IMAGE, settings=host_a)
    make_image(host_b, "v1", kernel=b"built here today")
    image_sync.sync(FAKE_IMAGE, source=built.directory, settings=host_b)

    assert usable_versions(host_b) == [entry.version, "v1"]
    assert images.resolve(FAKE_IMAGE, settings=host_b).version == "v1"
    assert images.resolve(FAKE_IMAGE, entry.version, host_b).version == entry.version


def test_the_catalog_and_inventory_work_on_postgresql(tmp_path):
    url = fresh_postgres_database("fluid_image_sync")
    a, b = (
        host_settings(h, tmp_path).model_copy(update={"database_url": url})
        for h in ("host-a", "host-b")
    )
    built = make_image(a)
    entry = image_sync.publish(FAKE_IMAGE, settings=a)
    assert image_sync.publish(FAKE_IMAGE, settings=a) == entry
    image_sync.sync(FAKE_IMAGE, source=built.directory, settings=b)

    assert image_catalog.holders(FAKE_IMAGE, entry.version, b) == ["host-a", "host-b"]
    assert image_catalog.get(FAKE_IMAGE, entry.version, b) == entry
