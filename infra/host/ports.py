"""Free 127.0.0.1 ports for SSH forwards."""

from __future__ import annotations

import fcntl
import random
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt
from sqlmodel import select

from infra.errors import NoFreePort
from infra.host import domains
from infra.records import store
from infra.records.hosts import on_this_host
from infra.settings import FluidSettings


def is_free(port: int, address: str = "127.0.0.1") -> bool:
    """True when nothing listens on `address`:`port` and it can be bound."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def pick(
    port_range: tuple[int, int], reserved: Iterable[int] = (), address: str = "127.0.0.1"
) -> int:
    """A free port on `address` in the inclusive range, not in `reserved`; NoFreePort when none
    is left."""
    low, high = port_range
    taken = set(reserved)
    candidates = [p for p in range(low, high + 1) if p not in taken]
    random.shuffle(candidates)
    for port in candidates:
        if is_free(port, address):
            return port
    raise NoFreePort(
        f"no free 127.0.0.1 port in {low}-{high} ({len(taken)} reserved by fluid's VMs); "
        "destroy unused sandboxes or widen FLUID_PORT_RANGE"
    )


@contextmanager
def allocation_lock(lock_dir: Path) -> Iterator[None]:
    """Serialise pick-then-bind across processes so two VMs never get the same port."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / ".ports.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def reserved(conn: libvirt.virConnect, settings: FluidSettings) -> set[int]:
    """Ports of every fluid VM of this host, running or not, so a stopped one keeps its port.

    Another host's ports are its own business: its forwards are on its own 127.0.0.1.
    """
    model = store.SandboxRecord
    with store.session(settings) as s:
        taken = {r.ssh_port for r in s.exec(select(model).where(on_this_host(model, settings)))}
    for dom, _meta in domains.fluid_domains(conn):
        taken.update(domains.forwarded_ports(dom))
    return taken
