"""The loopback guard: QEMU's user-mode network must not reach services on the host.

SLIRP maps the guest's 10.0.2.2 to the host's 127.0.0.1, where fluid's own services listen
(the Prefect API, databases), and every other sandbox's SSH forward listens there too. An
nftables rule rejects every *new* connection QEMU's processes open over the loopback
interface; the SSH forwards still work because those connections come from the host side.
"""

from __future__ import annotations

import pwd
import re
import shutil
import subprocess
from pathlib import Path

from infra.errors import FluidError

TABLE = "fluid_guard"


class GuardUnavailable(FluidError):
    """The host firewall rule that isolates sandboxes cannot be installed."""


def qemu_user() -> str:
    """The user libvirt runs QEMU as (qemu.conf `user`, Debian's default libvirt-qemu)."""
    conf = Path("/etc/libvirt/qemu.conf")
    if conf.exists():
        m = re.search(r'^\s*user\s*=\s*"([^"]+)"', conf.read_text(), re.MULTILINE)
        if m:
            return m.group(1)
    return "libvirt-qemu"


def _ruleset(uid: int) -> str:
    return f"""table inet {TABLE} {{
  chain output {{
    type filter hook output priority 0; policy accept;
    oifname "lo" meta skuid {uid} ct state new counter reject
  }}
}}
"""


def guard_installed() -> bool:
    """True when the loopback guard table is loaded."""
    nft = shutil.which("nft")
    if not nft:
        return False
    r = subprocess.run([nft, "list", "table", "inet", TABLE], capture_output=True, text=True)
    return r.returncode == 0 and "reject" in r.stdout


def ensure_guard() -> None:
    """Install the loopback guard once (idempotent); GuardUnavailable when it cannot be."""
    if guard_installed():
        return
    user = qemu_user()
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError as e:
        raise GuardUnavailable(f"QEMU user {user!r} does not exist; is libvirt installed?") from e
    if uid == 0:
        raise GuardUnavailable(
            "libvirt runs QEMU as root (qemu.conf user=root): the loopback guard cannot tell "
            "QEMU from fluid. Run QEMU as an unprivileged user (Debian's default)."
        )
    nft = shutil.which("nft")
    if not nft:
        raise GuardUnavailable("nftables (`nft`) is not installed: run scripts/setup-host.sh")
    r = subprocess.run([nft, "-f", "-"], input=_ruleset(uid), capture_output=True, text=True)
    if r.returncode != 0:
        raise GuardUnavailable(f"cannot install the nftables loopback guard: {r.stderr.strip()}")


def remove_guard() -> None:
    """Remove the guard table (host teardown only)."""
    subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True)
