"""Golden images: immutable, versioned qcow2 disks with their own kernel, built or imported.

Layout: <storage>/images/<name>/<version>/{disk.qcow2, vmlinuz, initrd.img, manifest.json}.
A version built or imported here is numbered (v1, v2, …: this host's own count); one copied
from another host (infra/host/image_sync.py) is named by its content address, the global
version a published image has on every host. A version directory holding a QUARANTINED file
failed verification and is never listed or resolved.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from infra.errors import ImageBuildError, ImageInUse, ImageNotFound
from infra.host.permissions import private_dir, qemu_dir
from infra.names import validate_name
from infra.settings import FluidSettings, get_settings

Progress = Callable[[str], None]

# Bump when the build changes in a way the hashed inputs do not show.
BUILD_FORMAT = 1
GUEST_PACKAGES = (
    "linux-image-cloud-amd64,initramfs-tools,kmod,systemd,systemd-sysv,udev,dbus,"
    "openssh-server,python3,python3-apt,sudo,tmux,apt,ca-certificates,iproute2,netbase,"
    "procps,less,cron,qemu-guest-agent"
)
DIRECT_BOOT_CMDLINE = "root=LABEL=rootfs rw console=ttyS0 quiet"
# Beside the parts of a version that failed verification: its reason. Such a copy is not used.
QUARANTINE_MARK = "QUARANTINED"


class ImagePart(BaseModel):
    """One file of an image version (disk, kernel or initrd) and its content's digest."""

    file: str
    size_bytes: int
    sha256: str


class ImageManifest(BaseModel):
    """What an image version is; written as manifest.json beside its disk."""

    name: str
    version: str
    source: Literal["debootstrap", "import"]
    disk: str = "disk.qcow2"
    sha256: str
    size_bytes: int
    kernel: str | None = None
    initrd: str | None = None
    kernel_version: str | None = None
    cmdline: str | None = None
    cloud_init: bool = False
    # QEMU's guest agent answers on a virtio channel: warm starts reseed identity through it.
    guest_agent: bool = False
    built_at: datetime
    build_seconds: float = 0.0
    inputs_hash: str | None = None
    packages: list[str] = []
    # Set when the version is published to the cluster's catalog (infra/host/image_sync.py):
    # its global version (a content address) and each part's digest.
    content_version: str | None = None
    parts: list[ImagePart] = []
    directory: Path | None = None

    @property
    def disk_path(self) -> Path:
        assert self.directory is not None
        return self.directory / self.disk

    @property
    def kernel_path(self) -> Path | None:
        return self.directory / self.kernel if self.kernel and self.directory else None

    @property
    def initrd_path(self) -> Path | None:
        return self.directory / self.initrd if self.initrd and self.directory else None

    @property
    def part_files(self) -> list[str]:
        """The names of the files the image is made of: its disk, and its kernel and initrd."""
        return [f for f in (self.disk, self.kernel, self.initrd) if f]

    def answers_to(self, version: str) -> bool:
        """Whether `version` names this image version: its own, or its global version."""
        return version in (self.version, self.content_version)


def _print(msg: str) -> None:
    print(msg, flush=True)


def _guest_files() -> Path:
    return Path(str(resources.files("infra") / "guest"))


def _inputs_hash(settings: FluidSettings) -> str:
    h = hashlib.sha256()
    h.update(f"{BUILD_FORMAT}|{settings.suite}|{settings.mirror}|{GUEST_PACKAGES}".encode())
    for f in sorted(_guest_files().iterdir()):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, in hex."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions_dir(name: str, settings: FluidSettings) -> Path:
    return settings.images_dir / name


def load_manifest(directory: Path) -> ImageManifest | None:
    """The manifest of the version in `directory` (quarantined or not); None if it has none."""
    try:
        m = ImageManifest.model_validate_json((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return m.model_copy(update={"directory": directory})


def _usable(directory: Path) -> ImageManifest | None:
    # Work trees (".v3.building-…", ".<version>.syncing-…") are hidden and never complete.
    if directory.name.startswith(".") or not directory.is_dir():
        return None
    if (directory / QUARANTINE_MARK).exists():
        return None
    return load_manifest(directory)


def list_images(settings: FluidSettings | None = None) -> list[ImageManifest]:
    """Every complete image version that is not quarantined, oldest first within a name."""
    settings = settings or get_settings()
    out: list[ImageManifest] = []
    if not settings.images_dir.is_dir():
        return out
    for name_dir in sorted(p for p in settings.images_dir.iterdir() if p.is_dir()):
        versions = [m for d in name_dir.iterdir() if (m := _usable(d))]
        out.extend(sorted(versions, key=_age))
    return out


def _age(m: ImageManifest) -> tuple[datetime, int]:
    # By when it was built: this host's numbered versions and copies named by their content
    # address interleave; a number breaks ties between this host's own.
    number = m.version.removeprefix("v")
    built = m.built_at if m.built_at.tzinfo else m.built_at.replace(tzinfo=UTC)
    return built, int(number) if number.isdigit() else -1


def resolve(
    name: str, version: str | None = None, settings: FluidSettings | None = None
) -> ImageManifest:
    """The newest version of image `name` (or that exact version); ImageNotFound otherwise."""
    settings = settings or get_settings()
    validate_name(name, "image name")
    versions = [m for m in list_images(settings) if m.name == name]
    if version is not None:
        versions = [m for m in versions if m.answers_to(version)]
    if not versions:
        known = sorted({m.name for m in list_images(settings)}) or ["none yet"]
        raise ImageNotFound(
            f"no image {name!r}{' version ' + version if version else ''}; "
            f"known images: {', '.join(known)}. Build one with `fluid image build`."
        )
    return versions[-1]


@contextmanager
def _build_lock(settings: FluidSettings) -> Iterator[None]:
    qemu_dir(settings.images_dir, settings.storage_dir)
    with (settings.images_dir / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _next_version(name: str, settings: FluidSettings) -> str:
    d = _versions_dir(name, settings)
    numbers = [
        int(p.name.removeprefix("v"))
        for p in d.glob("v*")
        if p.name.removeprefix("v").split(".")[0].isdigit() and "." not in p.name
    ]
    return f"v{max(numbers, default=0) + 1}"


def _run(cmd: list[str], step: str, progress: Progress | None = None) -> str:
    """Run a build step, streaming lines to `progress`; ImageBuildError with its tail on failure."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-30:]
        if (
            progress
            and line.startswith("I: ")
            and not line.startswith(
                (
                    "I: Retrieving",
                    "I: Validating",
                    "I: Extracting",
                    "I: Unpacking",
                    "I: Configuring",
                )
            )
        ):
            progress(f"  {step}: {line[3:].rstrip()}")
    if proc.wait() != 0:
        raise ImageBuildError(f"{step} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return "\n".join(tail)


def build(
    name: str | None = None,
    *,
    force: bool = False,
    progress: Progress | None = _print,
    settings: FluidSettings | None = None,
) -> ImageManifest:
    """Build a Debian golden image with debootstrap, unless one with the same inputs exists."""
    settings = settings or get_settings()
    name = validate_name(name or settings.image, "image name")
    say = progress or (lambda _m: None)
    inputs = _inputs_hash(settings)
    with _build_lock(settings):
        # Under the build lock any half-built tree belongs to a build that was killed.
        for stale in sorted(_versions_dir(name, settings).glob(".*.building-*")):
            say(f"removing {stale.name}, left by a build that was killed")
            _remove_work_tree(stale)
        existing = [m for m in list_images(settings) if m.name == name]
        if existing and existing[-1].inputs_hash == inputs and not force:
            say(
                f"image {name} {existing[-1].version} is up to date (same inputs); "
                "use --force to rebuild"
            )
            return existing[-1]
        if shutil.which("debootstrap") is None:
            raise ImageBuildError("debootstrap is not installed: run scripts/setup-host.sh")
        with _next_version_tree(name, settings, "building") as (work, final):
            manifest = _build_into(work, name, final.name, inputs, settings, say)
        say(
            f"image {name} {final.name} ready: {final / 'disk.qcow2'} "
            f"({manifest.size_bytes / 2**20:.0f} MiB, {manifest.build_seconds:.0f} s)"
        )
        _prune_locked(name, settings, say)
        return manifest.model_copy(update={"directory": final})


@contextmanager
def _next_version_tree(
    name: str, settings: FluidSettings, doing: str
) -> Iterator[tuple[Path, Path]]:
    """A work tree for image `name`'s next version and that version's directory (whose name is
    the version): the tree becomes the directory when the block completes and is removed when
    it fails. Named `.vN.<doing>-…`, so a killed run's tree is known for what it is. Call under
    the build lock."""
    version = _next_version(name, settings)
    final = _versions_dir(name, settings) / version
    work = Path(
        tempfile.mkdtemp(prefix=f".{version}.{doing}-", dir=_ensure(_versions_dir(name, settings)))
    )
    try:
        yield work, final
        work.chmod(0o755)
        work.rename(final)
    except BaseException:
        _remove_work_tree(work)
        raise


def _remove_work_tree(work: Path) -> None:
    """Remove a build's (or an import's) work tree, unmounting first what debootstrap may have
    mounted in it."""
    inside = str(work) + "/"

    def mounted() -> list[str]:
        points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        return sorted((p for p in points if p.startswith(inside)), reverse=True)

    for point in mounted():
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if left := mounted():
        # Never delete through a mount: a bind of the host's /dev would lose the host's nodes.
        raise ImageBuildError(f"cannot remove {work}: still mounted there: {', '.join(left)}")
    shutil.rmtree(work, ignore_errors=True)


def _ensure(d: Path) -> Path:
    # <storage>/images/<name>: QEMU opens the disks, kernels and initrds in it by path.
    return qemu_dir(d, d.parent.parent)


def _build_into(
    work: Path, name: str, version: str, inputs: str, settings: FluidSettings, say: Progress
) -> ImageManifest:
    start = time.monotonic()
    rootfs = work / "rootfs"
    cache = private_dir(settings.cache_dir) / "debootstrap"
    cache.mkdir(exist_ok=True)
    say(f"[1/4] debootstrap {settings.suite} into {rootfs} (about a minute)")
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={GUEST_PACKAGES}",
            f"--cache-dir={cache}",
            settings.suite,
            str(rootfs),
            settings.mirror,
        ],
        "debootstrap",
        say,
    )
    say(f"[2/4] configure the guest ({time.monotonic() - start:.0f} s)")
    _run(
        ["sh", str(_guest_files() / "configure-image.sh"), str(rootfs), str(_guest_files())],
        "configure",
    )
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageBuildError("the guest has no kernel in /boot (linux-image missing?)")
    kver = kernels[-1].name.removeprefix("vmlinuz-")
    shutil.copy2(rootfs / "boot" / f"vmlinuz-{kver}", work / "vmlinuz")
    shutil.copy2(rootfs / "boot" / f"initrd.img-{kver}", work / "initrd.img")
    packages = subprocess.run(
        ["chroot", str(rootfs), "dpkg-query", "-W", "-f", "${Package}=${Version}\\n"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    say(f"[3/4] make the ext4 filesystem ({time.monotonic() - start:.0f} s)")
    raw = work / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(4 << 30)
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "rootfs",
            "-d",
            str(rootfs),
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            str(raw),
        ],
        "mkfs.ext4",
    )
    shutil.rmtree(rootfs)
    say(f"[4/4] convert to qcow2 ({time.monotonic() - start:.0f} s)")
    disk = work / "disk.qcow2"
    _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)], "qemu-img convert")
    raw.unlink()
    for f in work.iterdir():
        f.chmod(0o444)
    manifest = ImageManifest(
        name=name,
        version=version,
        source="debootstrap",
        sha256=file_sha256(disk),
        size_bytes=disk.stat().st_size,
        kernel="vmlinuz",
        initrd="initrd.img",
        kernel_version=kver,
        cmdline=DIRECT_BOOT_CMDLINE,
        guest_agent="qemu-guest-agent" in GUEST_PACKAGES,
        built_at=datetime.now(UTC),
        build_seconds=round(time.monotonic() - start, 1),
        inputs_hash=inputs,
        packages=packages,
    )
    write_manifest(work, manifest)
    return manifest


def write_manifest(directory: Path, manifest: ImageManifest) -> None:
    """Write `manifest` as `directory`'s manifest.json (read-only), replacing any atomically."""
    path = directory / "manifest.json"
    # Per process: two publishing the same version at once must not write one file.
    tmp = directory / f".manifest.json.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.write_text(manifest.model_dump_json(indent=2, exclude={"directory"}) + "\n")
    tmp.chmod(0o444)
    tmp.replace(path)


def quarantine(manifest: ImageManifest, reason: str) -> None:
    """Mark a version unusable: it is no longer listed or resolved (its files stay, for
    inspection and for the disks that may rest on it)."""
    assert manifest.directory is not None
    (manifest.directory / QUARANTINE_MARK).write_text(reason + "\n")


def import_image(
    path: Path,
    name: str,
    *,
    progress: Progress | None = _print,
    settings: FluidSettings | None = None,
) -> ImageManifest:
    """Register an existing disk (qcow2 or raw) as a new version of image `name`.

    The disk must boot by itself (a bootloader), run cloud-init with the NoCloud datasource
    and openssh-server; fluid hands it its CA and the sandbox's principal through a seed.
    """
    settings = settings or get_settings()
    name = validate_name(name, "image name")
    say = progress or (lambda _m: None)
    path = Path(path)
    if not path.is_file():
        raise ImageNotFound(f"cannot import {path}: no such file")
    info = _qemu_img_info(path)
    with _build_lock(settings), _next_version_tree(name, settings, "importing") as (work, final):
        version = final.name
        start = time.monotonic()
        say(f"importing {path} ({info.get('format')}) as {name} {version}")
        disk = work / "disk.qcow2"
        _run(["qemu-img", "convert", "-O", "qcow2", str(path), str(disk)], "qemu-img convert")
        disk.chmod(0o444)
        manifest = ImageManifest(
            name=name,
            version=version,
            source="import",
            sha256=file_sha256(disk),
            size_bytes=disk.stat().st_size,
            cloud_init=True,
            built_at=datetime.now(UTC),
            build_seconds=round(time.monotonic() - start, 1),
        )
        write_manifest(work, manifest)
    return manifest.model_copy(update={"directory": final})


def _qemu_img_info(path: Path) -> dict:
    r = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        raise ImageBuildError(f"{path} is not a disk image qemu-img can read: {r.stderr.strip()}")
    return json.loads(r.stdout)


def dependents(manifest: ImageManifest, settings: FluidSettings | None = None) -> list[Path]:
    """Disks under fluid's storage whose backing chain rests on this image version.

    Sandbox overlays rest on the image, or on a warm slot's overlay (under pool/, of any
    database) that rests on it: the slots are what hold the image then.
    """
    settings = settings or get_settings()
    base = str(manifest.disk_path)
    out = []
    disks = [*settings.disks_dir.glob("*.qcow2"), *settings.storage_dir.glob("pool/*/*.qcow2")]
    for disk in disks:
        try:
            backing = _qemu_img_info(disk).get("full-backing-filename")
        except ImageBuildError:
            continue
        if backing == base:
            out.append(disk)
    return out


def delete(name: str, version: str, settings: FluidSettings | None = None) -> None:
    """Delete one image version; ImageInUse while any disk rests on it."""
    settings = settings or get_settings()
    with _build_lock(settings):
        _delete_locked(resolve(name, version, settings), settings)


def _delete_locked(manifest: ImageManifest, settings: FluidSettings) -> None:
    users = dependents(manifest, settings)
    if users:
        raise ImageInUse(
            f"image {manifest.name} {manifest.version} still backs {len(users)} disk(s) "
            f"({', '.join(p.name for p in users[:5])}); destroy those sandboxes first"
        )
    assert manifest.directory is not None
    shutil.rmtree(manifest.directory)
    # the name's folder goes with its last version
    if not any(manifest.directory.parent.iterdir()):
        manifest.directory.parent.rmdir()


def _prune_locked(name: str, settings: FluidSettings, say: Progress) -> None:
    """Remove older versions of `name` that no disk rests on any more; a published version
    stays (other hosts copy it from here, and the cluster's inventory says this host has it)."""
    versions = [m for m in list_images(settings) if m.name == name]
    for m in versions[:-1]:
        if m.content_version is None and not dependents(m, settings):
            _delete_locked(m, settings)
            say(f"removed unused image {m.name} {m.version}")
