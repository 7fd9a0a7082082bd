"""This hypervisor host's id: FLUID_HOST_ID, else a stable one kept in FLUID_HOME/host-id.

Not the hostname: containers and cloned machines share hostnames, and a host id names whose
records (sandboxes, spares, ports, runs) a janitor or a take may touch.
"""

from __future__ import annotations

import os
import re
import secrets
from functools import lru_cache
from pathlib import Path

from infra.errors import FluidError
from infra.host.permissions import PRIVATE_FILE, private_dir
from infra.settings import FluidSettings, get_settings

HOST_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class BadHostId(FluidError):
    """A host id that is not a short lowercase name."""


def check(host_id: str) -> str:
    """`host_id` if it is a valid host id (lowercase letters, digits, dashes; ≤ 63)."""
    if not HOST_ID.match(host_id):
        raise BadHostId(
            f"{host_id[:80]!r} is not a host id: use 1-63 lowercase letters, digits and dashes, "
            "starting with a letter or digit"
        )
    return host_id


def host_id(settings: FluidSettings | None = None) -> str:
    """The id of the host this process runs on."""
    settings = settings or get_settings()
    if settings.host_id:
        return settings.host_id
    return _kept_id(settings.home)


@lru_cache(maxsize=8)
def _kept_id(home: Path) -> str:
    path = home / "host-id"
    try:
        return check(path.read_text().strip())
    except FileNotFoundError:
        pass
    private_dir(home)
    # Written whole to a temporary file, then linked into place: a second process starting at
    # the same moment either wins the link or reads the complete id the first one linked.
    # "hv": a hypervisor; its work queue is then host-hv-….
    candidate = f"hv-{secrets.token_hex(4)}"
    tmp = home / f".host-id.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w") as f:
        f.write(candidate + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return check(path.read_text().strip())
