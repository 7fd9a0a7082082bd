"""The rules the guardrails match: command rules on a parsed simple command, path rules on the
files a command writes, and fluid's defaults of both (what would break a sandbox: wiping the
root filesystem, destroying the disk, powering off, locking fluid out of sshd)."""

from __future__ import annotations

import glob
import posixpath
import re
from collections.abc import Sequence
from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict, Field, field_validator

from infra.guardrails.argv import flags_in, program_name
from infra.guardrails.paths import AbsolutePath, normpath


def _alternatives(pattern: str) -> list[str]:
    return pattern.split("|")


def _matches(text: str, pattern: str) -> bool:
    """fnmatch `text` against `pattern`, whose |-separated alternatives are tried in turn."""
    return any(fnmatchcase(text, alt) for alt in _alternatives(pattern))


_KEY_PATH = re.compile(r"^([A-Za-z0-9_.-]+=)(/.*)$", re.DOTALL)


def _normalise_arg(arg: str) -> str:
    """An argument as rules see it: paths (also in key=/path) lexically normalised."""
    if arg.startswith("/"):
        return normpath(arg)
    if m := _KEY_PATH.match(arg):
        return m.group(1) + normpath(m.group(2))
    return arg


class CommandRule(BaseModel):
    """A rule matched on one parsed simple command, never on substrings of the command line.

    Every part given must match: the program, each flag and each argument glob. Alternatives
    are separated by | in any of them (`program="pkill|killall"`, `flags=["r|R|recursive"]`).
    """

    model_config = ConfigDict(extra="forbid")

    program: str = Field(
        min_length=1, description='fnmatch glob on the program\'s basename, e.g. "rm" or "mkfs*".'
    )
    args: list[str] = Field(
        default_factory=list,
        description=(
            "Globs that must each match at least one argument; arguments that are absolute "
            "paths are normalised first (// and /usr/.. count as /). The text is matched as "
            "typed, so a literal * is written [*]."
        ),
    )
    flags: list[str] = Field(
        default_factory=list,
        description='Flags that must each be set: "r" matches -r, -rf and -fr; "recursive" '
        "matches --recursive.",
    )
    reason: str = Field(default="", description="Why a deny rule refuses; told to the agent.")

    @field_validator("args", "flags")
    @classmethod
    def _no_empty_entries(cls, value: list[str]) -> list[str]:
        if any(not entry for entry in value):
            raise ValueError("entries may not be empty")
        return value

    @field_validator("flags")
    @classmethod
    def _strip_dashes(cls, value: list[str]) -> list[str]:
        # "-r" and "--recursive" are natural ways to write a flag; store it bare.
        return ["|".join(alt.lstrip("-") for alt in _alternatives(f)) for f in value]

    def matches(self, argv: Sequence[str]) -> bool:
        """Whether this rule matches the simple command `argv` (program first)."""
        if not argv or not _matches(program_name(argv[0]), self.program):
            return False
        args = [_normalise_arg(a) for a in argv[1:]]
        flags = flags_in(argv[1:])
        return all(any(f in flags for f in _alternatives(want)) for want in self.flags) and all(
            any(_matches(a, pattern) for a in args) for pattern in self.args
        )


class PathRule(BaseModel):
    """A file no command may write (by redirection, tee, cp, mv, rm, sed -i, dd of=, ...)."""

    model_config = ConfigDict(extra="forbid")

    path: AbsolutePath = Field(description="Absolute path or fnmatch glob.")
    reason: str = Field(min_length=1, description="Why; told to the agent.")


def _literal(paths: Sequence[str]) -> str:
    """An args pattern matching exactly these texts (glob characters in them are literal)."""
    return "|".join(glob.escape(p) for p in paths)


# Removing any of these (or everything in it) leaves a sandbox that cannot boot or be reached.
_SYSTEM_DIRS = (
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
    "/root", "/run", "/sbin", "/usr", "/var", "/usr/bin", "/usr/lib", "/usr/sbin", "/var/lib",
)  # fmt: skip
_WIPE_TARGETS = _literal([*_SYSTEM_DIRS, *(posixpath.join(d, "*") for d in _SYSTEM_DIRS)])
# Whole-disk and partition devices (not /dev/null, /dev/loop*, ...).
_DISKS = (
    "/dev/sd*", "/dev/vd*", "/dev/hd*", "/dev/xvd*", "/dev/nvme*", "/dev/mmcblk*",
    "/dev/dm-*", "/dev/md*", "/dev/mapper/*", "/dev/disk/*", "/dev/root",
)  # fmt: skip
_SSH_UNITS = (
    "ssh|sshd|ssh.service|sshd.service|ssh.socket|sshd.socket|fluid-instance|fluid-instance.service"
)
_SSH_TRUST = (
    "fluid logs in to the sandbox over sshd as root with certificates from its CA, trusted "
    "through sshd's configuration and fluid's files in /etc/ssh; changing them can lock fluid "
    "(and you) out of the sandbox. Leave sshd, its configuration and host keys as they are"
)
_POWER = (
    "powers off, reboots or isolates the sandbox, which ends your session and cannot be undone "
    "from inside it; if a change needs a reboot to take effect, say so in your summary instead"
)

DEFAULT_DENY_COMMANDS: tuple[CommandRule, ...] = (
    # Wiping the root filesystem.
    CommandRule(
        program="rm",
        flags=["r|R|recursive"],
        args=[_WIPE_TARGETS],
        reason="removes the root filesystem or a system directory the sandbox needs to boot "
        "and be reached; remove specific files or subdirectories instead",
    ),
    CommandRule(
        program="rm",
        flags=["no-preserve-root"],
        reason="--no-preserve-root lets rm remove the root filesystem; it is never needed",
    ),
    # Destroying the disk.
    CommandRule(
        program="mkfs*|mke2fs|mkswap|wipefs|fdisk|sfdisk|cfdisk|gdisk|sgdisk|parted|blkdiscard",
        args=["|".join(_DISKS)],
        reason="formats, wipes or repartitions the sandbox's disk; inspect disks with lsblk, "
        "blkid or df instead",
    ),
    CommandRule(
        program="dd",
        args=["|".join("of=" + d for d in _DISKS)],
        reason="overwrites the sandbox's disk",
    ),
    CommandRule(program="shred", args=["|".join(_DISKS)], reason="destroys the sandbox's disk"),
    # Powering off.
    CommandRule(program="poweroff|shutdown|halt|reboot|kexec", reason=_POWER),
    CommandRule(program="init|telinit", args=["0|1|6|s|S|single|rescue|emergency"], reason=_POWER),
    CommandRule(
        program="systemctl",
        args=[
            "poweroff|halt|reboot|soft-reboot|kexec|suspend|hibernate|hybrid-sleep|"
            "suspend-then-hibernate|rescue|emergency|isolate|default|poweroff.target|"
            "reboot.target|halt.target|kexec.target|rescue.target|emergency.target"
        ],
        reason=_POWER,
    ),
    # Tampering with sshd or fluid's CA trust (restart and reload are fine).
    CommandRule(
        program="systemctl", args=["stop|disable|mask|kill", _SSH_UNITS], reason=_SSH_TRUST
    ),
    CommandRule(program="service", args=["ssh|sshd", "stop"], reason=_SSH_TRUST),
    CommandRule(program="pkill|killall", args=["*sshd*|ssh"], reason=_SSH_TRUST),
    CommandRule(
        program="apt|apt-get|aptitude",
        args=["remove|purge|autoremove", "openssh*"],
        reason=_SSH_TRUST,
    ),
    CommandRule(program="dpkg", args=["-r|-P|--remove|--purge", "openssh*"], reason=_SSH_TRUST),
)

# fluid's sshd configuration, CA trust, principal and host key, and the boot service writing them.
_FLUID_SSH_FILES = (
    "/etc/ssh/sshd_config",
    "/etc/ssh/sshd_config.d",
    "/etc/ssh/fluid_*",
    "/etc/ssh/ssh_host_*",
    "/usr/local/sbin/fluid-instance",
    "/etc/systemd/system/fluid-instance.service",
)

DEFAULT_PROTECTED_PATHS: tuple[PathRule, ...] = (
    *(PathRule(path=p, reason=_SSH_TRUST) for p in _FLUID_SSH_FILES),
    *(PathRule(path=d, reason="it is the sandbox's disk") for d in _DISKS),
    PathRule(path="/proc/sysrq-trigger", reason="it can reboot or crash the sandbox's kernel"),
)

DEFAULT_DENY_WRITE: tuple[str, ...] = ("/proc", "/sys", "/dev", "/boot", *_FLUID_SSH_FILES)


def deny_write_reason(entry: str) -> str:
    """Why the file tools may not write under `entry` of deny_write; told to the agent."""
    if entry in ("/proc", "/sys", "/dev", "/boot"):
        return "kernel, device and boot state is not written through the file tools"
    if entry in _FLUID_SSH_FILES:
        return _SSH_TRUST
    return "the guardrails' deny_write list protects it"
