"""What a diff leaves out: pseudo filesystems, volatile trees and machine-local noise.

In the spirit of blueprintignore(5): logs, caches, package lists and databases (packages are
captured from dpkg itself), identity that every machine has of its own, and the traces fluid
and Ansible leave behind. Extend it with FLUID_IGNORE (comma-separated globs).

Files a user may legitimately edit are not here whole even when fluid writes part of them:
/etc/hosts and /etc/hostname are compared without the lines naming the sandbox itself (the
hosts kind). What stays whole-file is all fluid's or all the machine's: machine-ids, SSH host
keys and fluid's sshd files (written per sandbox at every boot; exporting them would clone one
machine's identity onto another), /etc/resolv.conf (the user-mode network's resolver; a host's
DNS settings belong in the files that generate it, which are captured), and files that tools
regenerate from captured sources (ld.so.cache, ssl/certs, the *- backups of passwd and group).
"""

from __future__ import annotations

import fnmatch
import os
import re
from functools import cache

# Never walked at all: not part of the machine's configuration.
SKIP_TREES = (
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/var/tmp",
    "/var/cache",
    "/var/log",
    "/var/lib/apt/lists",
    "/lost+found",
    "/var/lib/fluid",
    "/media",
    "/mnt",
)

DEFAULT_IGNORE = (
    "/var/lib/dpkg/**",
    "/var/lib/apt/**",
    "/var/lib/ucf/**",
    "/var/backups/**",
    "/var/lib/systemd/**",
    "/var/lib/private/**",
    "/var/lib/dhcp/**",
    "/var/lib/logrotate/**",
    "/var/lib/sudo/**",
    "/var/lib/polkit-1/**",
    "/var/lib/python/**",
    "/var/mail/**",
    "/etc/machine-id",
    "/var/lib/dbus/machine-id",
    "/etc/ssh/ssh_host_*",
    "/etc/ssh/fluid_*",
    "/etc/ld.so.cache",
    "/etc/resolv.conf",
    "/etc/mtab",
    "/etc/adjtime",
    "/etc/.pwd.lock",
    "/etc/subuid-",
    "/etc/subgid-",
    "/etc/passwd-",
    "/etc/group-",
    "/etc/shadow-",
    "/etc/gshadow-",
    "**/*.dpkg-*",
    "**/*.ucf-*",
    "**/__pycache__",
    "**/__pycache__/**",
    "**/*.pyc",
    "/root/.ansible",
    "/root/.ansible/**",
    "/root/.cache",
    "/root/.cache/**",
    "/root/.bash_history",
    "/root/.lesshst",
    "/root/.viminfo",
    "/root/.wget-hsts",
    "/home/*/.ansible",
    "/home/*/.ansible/**",
    "/home/*/.cache",
    "/home/*/.cache/**",
    "/home/*/.bash_history",
    "/etc/ssl/certs/**",
    "/usr/lib/python3/dist-packages/**/*.pyc",
    "/etc/alternatives/*.gz",
    "/usr/share/info/dir",
    "/usr/share/info/dir.old",
)


@cache
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str]:
    parts = []
    for p in patterns:
        # fnmatch's * crosses "/" already; ** is the same, spelled for readers.
        parts.append(fnmatch.translate(p.replace("**", "*")))
    return re.compile("|".join(parts) or r"(?!x)x")


def ignore_patterns(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The default patterns plus FLUID_IGNORE and `extra`."""
    env = tuple(p.strip() for p in os.environ.get("FLUID_IGNORE", "").split(",") if p.strip())
    return DEFAULT_IGNORE + env + tuple(extra)


def is_noise(path: str, patterns: tuple[str, ...]) -> bool:
    """True when `path` matches an ignore pattern."""
    return _compiled(patterns).match(path) is not None
