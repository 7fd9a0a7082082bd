"""A small Debian 12 cloud image for tests, built the way distributions build theirs.

The tests cannot download a real cloud image, so this makes one: a raw disk with an msdos
partition table and one ext4 partition, debootstrapped, with GRUB in the MBR, cloud-init
(NoCloud), openssh-server and DHCP on the first NIC, then converted to qcow2. Nothing in it
knows fluid: the CA, the principal and the sshd settings must arrive through the seed, as they
would for a real cloud image. It is built once per recipe and cached under `cache_dir`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

# Bump when the build changes in a way the recipe below does not show.
RECIPE_FORMAT = 1
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_CACHE = Path("/var/lib/fluid/cache/debootstrap")
DISK_BYTES = 2 << 30
# The kernel real Debian cloud images carry; it has no AHCI driver, which is why fluid
# attaches the seed as an IDE cdrom (infra/host/domains.py).
KERNEL = "linux-image-cloud-amd64"
PACKAGES = (
    KERNEL,
    "initramfs-tools",
    "kmod",
    "grub-pc",
    "cloud-init",
    "openssh-server",
    "python3",
    # debootstrap does not resolve virtual packages: python3-cryptography (cloud-init, via
    # oauthlib and jwt) needs python3-cffi-backend-api-*, which this one provides.
    "python3-cffi-backend",
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "dbus",
    "netbase",
    "iproute2",
    "e2fsprogs",
    "procps",
)
# Files written into the image, by path relative to its root. /etc/fstab is added at build
# time because it names the filesystem's UUID, which is derived from the recipe's hash.
FILES = {
    "etc/default/grub": (
        "GRUB_DEFAULT=0\n"
        "GRUB_TIMEOUT=0\n"
        "GRUB_TIMEOUT_STYLE=hidden\n"
        "GRUB_DISTRIBUTOR=Debian\n"
        'GRUB_CMDLINE_LINUX_DEFAULT=""\n'
        # The last console= is /dev/console, where cloud-init prints the host keys.
        'GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200n8"\n'
        'GRUB_TERMINAL="serial console"\n'
        'GRUB_SERIAL_COMMAND="serial --speed=115200"\n'
        "GRUB_DISABLE_OS_PROBER=true\n"
        "GRUB_DISABLE_RECOVERY=true\n"
    ),
    "etc/cloud/cloud.cfg.d/90-image.cfg": (
        "datasource_list: [NoCloud, None]\n"
        # Debian's locale-gen makes only what /etc/locale.gen enables (nothing here), so
        # cloud-init's default en_US.UTF-8 fails update-locale; C.UTF-8 is built into glibc.
        "locale: C.UTF-8\n"
    ),
    # A fallback for boots where cloud-init renders no network config of its own.
    "etc/systemd/network/90-dhcp.network": "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n",
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
}
# Timers that would make a fresh boot fetch package lists or scan disks under slow TCG.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-networkd-wait-online.service",
)


def _say(msg: str) -> None:
    print(f"cloud-image: {msg}", flush=True)


def recipe_hash() -> str:
    """Hash of everything that decides the image's content; names the cached file."""
    recipe = {
        "format": RECIPE_FORMAT,
        "suite": SUITE,
        "mirror": MIRROR,
        "disk_bytes": DISK_BYTES,
        "packages": PACKAGES,
        "files": FILES,
        "masked": MASKED_UNITS,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def cloud_image(cache_dir: Path) -> Path:
    """The cached cloud image's qcow2 for the current recipe, built first if missing."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = recipe_hash()
    final = cache_dir / f"debian-12-cloud-{digest[:16]}.qcow2"
    # One build at a time per cache: a second caller waits, then reuses the first's result.
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_file():
            _say(f"reusing {final}")
            return final
        work = Path(tempfile.mkdtemp(prefix=".building-", dir=cache_dir))
        try:
            start = time.monotonic()
            qcow2 = _build(work, digest, start)
            qcow2.rename(final)
            _say(
                f"built {final} ({final.stat().st_size / 2**20:.0f} MiB) in "
                f"{time.monotonic() - start:.0f} s"
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for old in cache_dir.glob("debian-12-cloud-*.qcow2"):
            if old != final:  # an image of an older recipe is never used again
                old.unlink()
        return final


def _run(cmd: list[str], step: str, *, echo: bool = False, env: dict | None = None) -> str:
    """Run one build step; its output's tail goes into the error when it fails."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    out: list[str] = []
    for line in proc.stdout:
        out.append(line.rstrip())
        # debootstrap's per-package lines number in the hundreds; its stage lines are enough.
        if (
            echo
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
            _say(f"  {step}: {line[3:].rstrip()}")
    if proc.wait() != 0:
        tail = "\n".join(out[-40:])
        raise RuntimeError(f"{step} failed (exit {proc.returncode}):\n{tail}")
    return "\n".join(out)


def _chroot(root: Path, *cmd: str, step: str) -> str:
    """Run a command inside the image with a clean environment and no prompts."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    return _run(["chroot", str(root), *cmd], step, env=env)


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first, from this process's mount table."""
    prefix = str(root)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def _release_mounts(root: Path) -> None:
    """Unmount everything at or below `root` (ours and any debootstrap left behind)."""
    for point in _mounts_under(root):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            # Something still holds it; detach it lazily so the loop device can go.
            subprocess.run(["umount", "-l", point], capture_output=True)


@contextlib.contextmanager
def _loop_device(raw: Path) -> Iterator[tuple[str, str]]:
    """Attach `raw` with partition scanning; yield (disk, first partition); always detach."""
    loop = _run(["losetup", "-P", "-f", "--show", str(raw)], "losetup").strip()
    try:
        part = f"{loop}p1"
        # Some kernels (and containers without udev) do not scan a new loop device's table;
        # partx asks the kernel to add the partitions, and devtmpfs makes their nodes.
        for _ in range(20):
            if os.path.exists(part):
                break
            time.sleep(0.1)
        else:
            _run(["partx", "-a", loop], "partx")
            for _ in range(50):
                if os.path.exists(part):
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError(f"{part} did not appear after attaching {raw}")
        yield loop, part
    finally:
        r = subprocess.run(["losetup", "-d", loop], capture_output=True, text=True)
        if r.returncode != 0:
            _say(f"  could not detach {loop}: {r.stderr.strip()}")


@contextlib.contextmanager
def _mounted(device: str, point: Path) -> Iterator[Path]:
    """Mount `device` at `point`; on the way out unmount it and anything mounted inside."""
    point.mkdir(parents=True, exist_ok=True)
    _run(["mount", device, str(point)], "mount")
    try:
        yield point
    finally:
        _release_mounts(point)


@contextlib.contextmanager
def _host_filesystems(root: Path) -> Iterator[None]:
    """/dev, /proc and /sys inside the image, which grub-install and update-grub probe."""
    try:
        _run(["mount", "--bind", "/dev", str(root / "dev")], "mount /dev")
        _run(["mount", "-t", "proc", "proc", str(root / "proc")], "mount /proc")
        _run(["mount", "-t", "sysfs", "sysfs", str(root / "sys")], "mount /sys")
        yield
    finally:
        for sub in ("sys", "proc", "dev"):
            _release_mounts(root / sub)


def _build(work: Path, digest: str, start: float) -> Path:
    """Build the image in `work`; return its qcow2 there."""

    def step(n: int, msg: str) -> None:
        _say(f"[{n}/6] {msg} ({time.monotonic() - start:.0f} s)")

    # A fixed UUID per recipe: fstab and grub.cfg name it, and rebuilds stay alike.
    fs_uuid = str(uuid.UUID(digest[:32]))
    raw = work / "disk.raw"
    step(1, f"partition a {DISK_BYTES >> 30} GiB raw disk")
    with raw.open("wb") as f:
        f.truncate(DISK_BYTES)
    table = "label: dos\nstart=2048, type=83, bootable\n"
    subprocess.run(["sfdisk", "-q", str(raw)], input=table, text=True, check=True)
    with _loop_device(raw) as (loop, part):
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-L",
                "rootfs",
                "-U",
                fs_uuid,
                # Initialise now, so the guest's first boot does not spend TCG time on it.
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                part,
            ],
            "mkfs.ext4",
        )
        with _mounted(part, work / "mnt") as root:
            step(2, f"debootstrap {SUITE} onto {part} (a few minutes)")
            DEBOOTSTRAP_CACHE.mkdir(parents=True, exist_ok=True)
            try:
                _run(
                    [
                        "debootstrap",
                        "--variant=minbase",
                        f"--include={','.join(PACKAGES)}",
                        f"--cache-dir={DEBOOTSTRAP_CACHE}",
                        SUITE,
                        str(root),
                        MIRROR,
                    ],
                    "debootstrap",
                    echo=True,
                )
            except RuntimeError as e:
                # Its own log says which package failed and why; the work folder goes away.
                log = root / "debootstrap/debootstrap.log"
                detail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else []
                raise RuntimeError(f"{e}\ndebootstrap.log:\n" + "\n".join(detail)) from None
            step(3, "configure it as a cloud image")
            _configure(root, fs_uuid)
            step(4, f"install GRUB onto {loop}")
            _install_grub(root, loop, fs_uuid)
            step(5, "clean up")
            _clean(root)
    step(6, "convert to qcow2")
    qcow2 = work / "disk.qcow2"
    _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], "qemu-img convert")
    raw.unlink()
    return qcow2


def _configure(root: Path, fs_uuid: str) -> None:
    """Generic cloud-image settings; nothing fluid-specific (that comes from the seed)."""
    for rel, text in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "etc/fstab").write_text(f"UUID={fs_uuid} / ext4 defaults,errors=remount-ro 0 1\n")
    # No hostname: cloud-init sets the one the seed's meta-data names.
    (root / "etc/hostname").unlink(missing_ok=True)
    # debootstrap copied the build host's resolver config; the guest gets DNS from DHCP.
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    _chroot(root, "systemctl", "enable", "systemd-networkd", "systemd-resolved", step="enable")
    _chroot(root, "systemctl", "mask", *MASKED_UNITS, step="mask")
    # Every instance must make its own identity: host keys (cloud-init) and machine-id.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)


def _install_grub(root: Path, loop: str, fs_uuid: str) -> None:
    """GRUB into the loop disk's MBR, with a grub.cfg that boots root=UUID=…"""
    # update-grub writes root=UUID= only when /dev/disk/by-uuid names the filesystem, which
    # needs udev; the build host has none, so it would write root=/dev/loopNp1. /etc/default/
    # grub is read after grub-mkconfig probes the root device, so a drop-in can correct it;
    # it is removed again, and inside the guest update-grub finds the UUID itself.
    dropin = root / "etc/default/grub.d/zz-image-build.cfg"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(f'GRUB_DEVICE="UUID={fs_uuid}"\n')
    try:
        with _host_filesystems(root):
            _chroot(
                root,
                "grub-install",
                "--target=i386-pc",
                "--boot-directory=/boot",
                loop,
                step="grub-install",
            )
            _chroot(root, "update-grub", step="update-grub")
    finally:
        dropin.unlink(missing_ok=True)
    cfg = (root / "boot/grub/grub.cfg").read_text()
    if f"root=UUID={fs_uuid}" not in cfg or "console=ttyS0" not in cfg:
        raise RuntimeError("grub.cfg does not boot root=UUID=… with console=ttyS0")


def _clean(root: Path) -> None:
    """Drop what a small image does not need, and give freed blocks back to the raw file."""
    _chroot(root, "apt-get", "clean", step="apt-get clean")
    for pattern in (
        "var/lib/apt/lists/*",
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
        "var/log/*.log",
        "var/cache/debconf/*-old",
        "tmp/*",
    ):
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    # Deleted files' blocks are still data in the raw file; trimming punches them out, so
    # qemu-img convert leaves them out of the qcow2.
    # ext4 frees a deleted file's blocks only when its journal commits: sync first.
    subprocess.run(["sync", "-f", str(root)], check=True)
    trim = subprocess.run(["fstrim", str(root)], capture_output=True, text=True)
    if trim.returncode != 0:  # only the qcow2's size suffers
        _say(f"  fstrim failed, the image keeps deleted files' blocks: {trim.stderr.strip()}")
