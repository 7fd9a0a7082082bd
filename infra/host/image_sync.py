"""Images across hosts: publish a local version to the cluster's catalog under its content
address, copy it to this host verified part by part before it can be used, re-verify a copy.

An image version's global version is its content address: the first 16 hex digits of a
sha256 over its parts' (file name, sha256), sorted, so every host names the same bytes alike
(v3 on host A is not v3 on host B; its global version is the same on both). A copy is
written to a hidden work tree, each part hashed as it is written and compared with the
catalog, and only then renamed into place: a copy that does not match never becomes a version
`images.resolve` (and so sandbox creation) can find. A local copy that later fails
`verify` is quarantined (images.quarantine) and is no longer resolved either.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import BaseModel

from infra.errors import ImageCorrupt, ImageInUse, ImageNotFound
from infra.host import images
from infra.host.file_locks import FileLock
from infra.host.identity import host_id
from infra.host.images import ImageManifest, ImagePart
from infra.host.permissions import qemu_dir
from infra.names import validate_name
from infra.records import image_catalog
from infra.records.image_catalog import CatalogImage
from infra.records.store import utcnow
from infra.settings import FluidSettings, get_settings

Progress = Callable[[str], None]

CONTENT_VERSION_DIGITS = 16
# A part is a plain file name in the version's folder: never a path, never hidden.
PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CHUNK = 4 << 20


class Synced(BaseModel):
    """What `sync` did: the local copy of a published version, and whether it copied it now."""

    name: str
    version: str
    directory: Path
    copied: bool
    bytes_copied: int = 0


def content_address(parts: Iterable[ImagePart]) -> str:
    """The global version of an image made of `parts`: a digest of their names and digests."""
    h = hashlib.sha256()
    for p in sorted(parts, key=lambda p: p.file):
        h.update(f"{p.file}\0{p.sha256}\n".encode())
    return h.hexdigest()[:CONTENT_VERSION_DIGITS]


def _part_name(file: str) -> str:
    if not PART_NAME.match(file):
        raise ImageCorrupt(
            f"{file[:80]!r} is not an image part's file name (a plain name in the version's "
            "folder); the catalog entry or manifest naming it is refused",
            part=file[:80],
            expected="a plain file name",
            actual=None,
        )
    return file


Digest = tuple[str, int]  # (sha256, size in bytes)


def _hash(path: Path) -> Digest | None:
    """(sha256, size) of the regular file at `path`; None when there is none."""
    try:
        with path.open("rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            h, size = hashlib.sha256(), 0
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
                size += len(chunk)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return h.hexdigest(), size


def _mismatch(label: str, want: ImagePart, got: Digest | None, fix: str) -> ImageCorrupt:
    actual = got[0] if got else None
    found = f"sha256 {got[0]} ({got[1]} bytes)" if got else "no such file"
    return ImageCorrupt(
        f"{label}: part {want.file} is {found} where sha256 {want.sha256} "
        f"({want.size_bytes} bytes) was recorded; {fix}",
        part=want.file,
        expected=want.sha256,
        actual=actual,
    )


def _first_mismatch(
    expected: list[ImagePart], actual: dict[str, Digest | None]
) -> tuple[ImagePart, Digest | None] | None:
    """The first expected part whose actual digest differs (or is missing), and that digest."""
    for want in expected:
        got = actual.get(want.file)
        if got != (want.sha256, want.size_bytes):
            return want, got
    return None


def _hash_all(directory: Path, files: Iterable[str]) -> dict[str, Digest | None]:
    return {f: _hash(directory / _part_name(f)) for f in files}


def _recorded(m: ImageManifest) -> list[ImagePart]:
    """What `m`'s parts were when it was published, else its disk as it was built."""
    return m.parts or [ImagePart(file=m.disk, size_bytes=m.size_bytes, sha256=m.sha256)]


def publish(
    name: str | None = None, version: str | None = None, *, settings: FluidSettings | None = None
) -> CatalogImage:
    """Publish local image `name` (default FLUID_IMAGE) at `version` (default: the newest) to
    the cluster's catalog under its content address; publishing it again changes nothing.

    Every part is hashed now: the disk must still match the digest recorded when it was built
    (or published), else ImageCorrupt and the copy is quarantined.
    """
    settings = settings or get_settings()
    name = validate_name(name or settings.image, "image name")
    local = images.resolve(name, version, settings)
    assert local.directory is not None
    actual = _hash_all(local.directory, local.part_files)
    if bad := _first_mismatch(_recorded(local), actual):
        images.quarantine(local, f"part {bad[0].file} changed since it was recorded")
        raise _mismatch(
            f"image {name} {local.version} at {local.directory}",
            bad[0],
            bad[1],
            "the copy is quarantined and will not be used; rebuild or sync the image again",
        )
    parts = []
    for file, got in actual.items():
        if got is None:
            raise ImageNotFound(f"image {name} {local.version} has no {file} in {local.directory}")
        parts.append(ImagePart(file=file, size_bytes=got[1], sha256=got[0]))
    address = content_address(parts)
    if (local.content_version, local.parts) != (address, parts):
        local = local.model_copy(update={"content_version": address, "parts": parts})
        images.write_manifest(local.directory, local)
    entry = image_catalog.add(
        CatalogImage(
            name=name,
            version=address,
            origin_version=local.version,
            published_by=host_id(settings),
            published_at=utcnow(),
            parts=parts,
            manifest=local.model_dump(mode="json", exclude={"directory"}),
        ),
        settings,
    )
    image_catalog.mark_held(host_id(settings), name, address, settings)
    return entry


def catalog_entry(
    name: str, version: str | None = None, settings: FluidSettings | None = None
) -> CatalogImage:
    """The catalog's entry for `name` at global `version` (default: the newest published)."""
    validate_name(name, "image name")
    entry = (
        image_catalog.get(name, version, settings)
        if version
        else image_catalog.newest(name, settings)
    )
    if entry is None:
        raise ImageNotFound(
            f"image {name}{' version ' + version if version else ''} is not published to the "
            f"cluster's catalog; publish it on a host that has it: `fluid image publish {name}`"
        )
    for p in entry.parts:
        _part_name(p.file)
    return entry


def _local_copy(entry: CatalogImage, settings: FluidSettings) -> ImageManifest | None:
    """This host's usable copy of `entry`. A copy that claims the version but whose parts are
    missing, of another size or recorded otherwise is quarantined, not used."""
    want = {(p.file, p.sha256, p.size_bytes) for p in entry.parts}
    for m in images.list_images(settings):
        if m.name != entry.name or not m.answers_to(entry.version):
            continue
        assert m.directory is not None
        have = {(p.file, p.sha256, p.size_bytes) for p in m.parts}
        sizes = {(p.file, p.sha256, _size(m.directory / p.file)) for p in m.parts}
        if have == want == sizes:
            return m
        images.quarantine(m, f"does not match the catalog's {entry.name} {entry.version}")
    return None


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _source_dir(entry: CatalogImage, source: Path) -> Path:
    """Where in `source` the parts are: `source` itself (a version's folder), or the version's
    folder under it taken as an images folder or a storage folder."""
    candidates = [source]
    for top in (source, source / "images"):
        for version in dict.fromkeys((entry.origin_version, entry.version)):
            candidates.append(top / entry.name / version)
    for d in candidates:
        if all((d / p.file).is_file() for p in entry.parts):
            return d
    raise ImageNotFound(
        f"{source} holds no copy of image {entry.name} {entry.version} (looked for "
        f"{', '.join(p.file for p in entry.parts)} in {source} and its "
        f"{entry.name}/{entry.origin_version} folder); give the publishing host "
        f"{entry.published_by}'s folder <storage>/images/{entry.name}/{entry.origin_version}, "
        "as this host sees it"
    )


def _copy_hashing(src: Path, dst: Path) -> Digest | None:
    """Copy the regular file `src` to the new file `dst`, durably; the (sha256, size) of what
    was written, or None when `src` is not a regular file."""
    h, size = hashlib.sha256(), 0
    with src.open("rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        with dst.open("xb") as out:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
    return h.hexdigest(), size


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _clear_way(final: Path, settings: FluidSettings) -> None:
    """Remove what sits where the copy goes: only ever a quarantined (or broken) copy."""
    if not final.exists():
        return
    old = images.load_manifest(final)
    if old is not None and (users := images.dependents(old, settings)):
        raise ImageInUse(
            f"a quarantined copy of image {old.name} {final.name} at {final} still backs "
            f"{len(users)} disk(s) ({', '.join(p.name for p in users[:5])}); destroy those "
            "sandboxes, then sync again"
        )
    shutil.rmtree(final)


def sync(
    name: str,
    version: str | None = None,
    *,
    source: Path,
    progress: Progress | None = None,
    settings: FluidSettings | None = None,
) -> Synced:
    """Copy published image `name` at global `version` (default: the newest) from `source` to
    this host, each part verified against the catalog before the copy can be used; ImageCorrupt
    (and nothing usable left) when a part differs. A verified copy already here is kept."""
    settings = settings or get_settings()
    say = progress or (lambda _m: None)
    entry = catalog_entry(name, version, settings)
    here = host_id(settings)
    name_dir = qemu_dir(settings.images_dir / entry.name, settings.storage_dir)
    with FileLock(name_dir / ".sync.lock", wait=True):
        if (local := _local_copy(entry, settings)) is not None:
            assert local.directory is not None
            image_catalog.mark_held(here, entry.name, entry.version, settings)
            say(f"image {entry.name} {entry.version} is here already: {local.directory}")
            return Synced(
                name=entry.name, version=entry.version, directory=local.directory, copied=False
            )
        # No usable copy here: whatever the inventory said of this host is no longer true.
        image_catalog.forget_held(here, entry.name, entry.version, settings)
        src = _source_dir(entry, Path(source))
        # Under the lock, a work tree of this version belongs to a sync that was killed.
        for stale in name_dir.glob(f".{entry.version}.syncing-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{entry.version}.syncing-", dir=name_dir))
        final = name_dir / entry.version
        try:
            copied = _copy_parts(entry, src, work, say)
            manifest = ImageManifest.model_validate(entry.manifest).model_copy(
                update={
                    "version": entry.version,
                    "content_version": entry.version,
                    "parts": entry.parts,
                    "directory": None,
                }
            )
            if sorted(manifest.part_files) != sorted(p.file for p in entry.parts):
                raise ImageCorrupt(
                    f"the catalog's image {entry.name} {entry.version} names parts "
                    f"{sorted(p.file for p in entry.parts)} but its manifest boots from "
                    f"{sorted(manifest.part_files)}; publish it again",
                    part=",".join(manifest.part_files),
                    expected=entry.version,
                    actual=None,
                )
            images.write_manifest(work, manifest)
            _clear_way(final, settings)
            work.chmod(0o755)
            work.rename(final)
            _fsync_dir(name_dir)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        image_catalog.mark_held(here, entry.name, entry.version, settings)
    say(f"image {entry.name} {entry.version} verified and ready: {final}")
    return Synced(
        name=entry.name, version=entry.version, directory=final, copied=True, bytes_copied=copied
    )


def _copy_parts(entry: CatalogImage, src: Path, work: Path, say: Progress) -> int:
    """Copy each part into `work`, hashing what is written; ImageCorrupt at the first that
    differs from the catalog. The bytes copied."""
    total = 0
    for want in entry.parts:
        say(f"copying {want.file} ({want.size_bytes / 2**20:.0f} MiB) from {src}")
        got = _copy_hashing(src / want.file, work / want.file)
        if got != (want.sha256, want.size_bytes):
            raise _mismatch(
                f"image {entry.name} {entry.version} from {src}",
                want,
                got,
                f"the copy is refused and nothing of it kept; check {src / want.file} on "
                f"{entry.published_by}, or publish a good copy again",
            )
        (work / want.file).chmod(0o444)
        total += got[1]
    return total


def verify(
    name: str, version: str | None = None, *, settings: FluidSettings | None = None
) -> ImageManifest:
    """Re-hash this host's copy of image `name` (`version`: local or global; default: the
    newest) against the catalog, else against its manifest; ImageCorrupt, and the copy
    quarantined (never resolved again), when a part differs."""
    settings = settings or get_settings()
    local = images.resolve(name, version, settings)
    assert local.directory is not None
    entry = (
        image_catalog.get(local.name, local.content_version, settings)
        if local.content_version
        else None
    )
    expected = entry.parts if entry else _recorded(local)
    here = host_id(settings)
    actual = _hash_all(local.directory, [p.file for p in expected])
    if bad := _first_mismatch(expected, actual):
        images.quarantine(local, f"part {bad[0].file} failed verification")
        if local.content_version:
            image_catalog.forget_held(here, local.name, local.content_version, settings)
        fix = (
            f"sync it again: `fluid image sync {local.name} --version {local.content_version} "
            "--from DIR`"
            if entry
            else "rebuild it"
        )
        raise _mismatch(
            f"image {local.name} {local.version} at {local.directory}",
            bad[0],
            bad[1],
            f"the copy is quarantined and will not be used; {fix}",
        )
    if entry is not None:
        image_catalog.mark_held(here, entry.name, entry.version, settings)
    return local
