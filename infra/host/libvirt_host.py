"""The libvirt connection and what this host can run (KVM or TCG)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt

from infra.errors import LibvirtUnavailable
from infra.settings import FluidSettings, get_settings

# libvirt prints every error to stderr by default; fluid raises its own instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def connect(settings: FluidSettings | None = None) -> libvirt.virConnect:
    """Open the configured libvirt URI or raise LibvirtUnavailable with how to fix it."""
    settings = settings or get_settings()
    try:
        return libvirt.open(settings.libvirt_uri)
    except libvirt.libvirtError as e:
        raise LibvirtUnavailable(
            f"cannot reach libvirt at {settings.libvirt_uri}: {e.get_error_message()}. "
            "Start it with `virtlogd -d && libvirtd -d` (scripts/setup-host.sh does this)."
        ) from e


@contextmanager
def connection(settings: FluidSettings | None = None) -> Iterator[libvirt.virConnect]:
    """A libvirt connection for the length of a `with` block, closed on every exit."""
    conn = connect(settings)
    try:
        yield conn
    finally:
        conn.close()


def kvm_usable() -> bool:
    """True where /dev/kvm can run a stock guest kernel.

    A nested PVM host (kvm_pvm) exposes /dev/kvm but runs only PVM-enabled kernels, and
    without VMX/SVM in the CPU flags KVM cannot run ordinary guests either.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    if Path("/sys/module/kvm_pvm").exists():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " vmx" in flags or " svm" in flags


def domain_type(settings: FluidSettings | None = None) -> str:
    """`kvm` or `qemu` (TCG) as configured, choosing automatically for `auto`."""
    settings = settings or get_settings()
    if settings.domain_type != "auto":
        return settings.domain_type
    return "kvm" if kvm_usable() else "qemu"


def lookup(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
    """The domain called `name`, or None."""
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError:
        return None


def domain_state(dom: libvirt.virDomain | None) -> str:
    """A domain's state as fluid shows it: running, paused, shut off, or missing (None)."""
    if dom is None:
        return "missing"
    st = dom.state()[0]
    if st == libvirt.VIR_DOMAIN_RUNNING:
        return "running"
    if st == libvirt.VIR_DOMAIN_PAUSED:
        return "paused"
    return "shut off"


def remove_domain(conn: libvirt.virConnect, name: str) -> bool:
    """Power off and undefine domain `name` with its snapshots' metadata; False if absent."""
    dom = lookup(conn, name)
    if dom is None:
        return False
    persistent = dom.isPersistent()
    if dom.isActive():
        try:
            dom.destroy()
        except libvirt.libvirtError:
            # It may have stopped on its own between the check and the call.
            if dom.isActive():
                raise
    if persistent:  # a transient domain is gone once destroyed
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    return True
