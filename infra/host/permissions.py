"""Private places on the host: what fluid keeps (captures, blobs, runs, keys) is root's alone.

Guests' files pass through here (configuration with secrets in it, audit keys, approvals), so
nothing fluid writes may be readable by another local user. mkdir's and open's modes are cut
by the umask and not applied to what already exists: these helpers set the mode explicitly.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from infra.host.firewall import qemu_gid

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
# Storage QEMU opens by path (disks, kernels, saved states): its group may enter, not list.
QEMU_DIR = 0o710


def _make_dirs(path: Path) -> None:
    # mkdir(parents=True) gives the parents it makes the default mode, not `mode`.
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=PRIVATE_DIR)


def private_dir(path: Path) -> Path:
    """`path` (and missing parents) as a directory only its owner can enter; returns it."""
    path = Path(path)
    _make_dirs(path)
    if (path.stat().st_mode & 0o777) != PRIVATE_DIR:
        path.chmod(PRIVATE_DIR)
    return path


def qemu_dir(path: Path, top: Path) -> Path:
    """`top` and each directory below it down to `path` as root's, enterable (not listable)
    by QEMU's group only (0710, group from libvirt's qemu.conf); returns `path`.

    Made 0700 and only then given to the group, so none is ever open wider; an existing
    looser one (an older install) is tightened.
    """
    path, top = Path(path), Path(top)
    gid = qemu_gid()
    # Above `top` is the host's (/var/lib): QEMU must be able to pass through what is made.
    top.parent.mkdir(parents=True, exist_ok=True)
    d = top
    for part in ("", *path.relative_to(top).parts):
        d = d / part if part else d
        _make_dirs(d)
        st = d.stat()
        if (st.st_uid, st.st_gid) != (os.geteuid(), gid):
            os.chown(d, os.geteuid(), gid)
        if stat.S_IMODE(st.st_mode) != QEMU_DIR:
            d.chmod(QEMU_DIR)
    return path


def write_private(path: Path, data: bytes) -> Path:
    """Write `data` to `path` atomically, mode 0600 from the first byte; returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
