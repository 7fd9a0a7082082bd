"""The host a benchmark runs on: its load, other VMs, the root check, the last error lines."""

from __future__ import annotations

import os
import sys

import libvirt

from infra.host import domains, images
from infra.host.libvirt_host import connect, domain_type
from infra.settings import FluidSettings


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as the host lines print them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def guest_facts(settings: FluidSettings, golden: images.ImageManifest) -> str:
    """The domain type, the guest's size and the image, as the host lines print them."""
    return (
        f"domain_type={domain_type(settings)} guest={settings.memory_mib} MiB/"
        f"{settings.vcpus} vCPU tb_cache={settings.tb_cache_mib} MiB "
        f"image={golden.name}:{golden.version}"
    )


def is_root(needs: str) -> bool:
    """True as root; otherwise says on stderr what root is needed for."""
    if os.geteuid() != 0:
        print(f"error: run as root ({needs})", file=sys.stderr)
        return False
    return True


def ours(dom: libvirt.virDomain, settings: FluidSettings) -> bool:
    """A domain of this run (sandboxes, slots and virt-clone domains carry its store id)."""
    meta = domains.read_metadata(dom)
    return meta is not None and meta.store == settings.store_id


def other_vms(settings: FluidSettings) -> int | None:
    """Running domains that are not this run's, or None when libvirt cannot say."""
    try:
        conn = connect(settings)
        try:
            active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            return sum(1 for d in active if not ours(d, settings))
        finally:
            conn.close()
    except Exception:
        return None


def busy_line(settings: FluidSettings, when: str) -> str:
    """Load average and other running VMs: the figures are only as quiet as the host was."""
    load = load_average()
    n = other_vms(settings)
    return f"{when}: load {load}; other running VMs on this host: {'?' if n is None else n}"


def report_errors(error: str | None, problems: list[str], code: int) -> int:
    """Print the run's error and the cleanup's problems on stderr; the exit status after them."""
    if error:
        print(f"error: {error}", file=sys.stderr)
    for p in problems:
        print(f"error: cleanup: {p}", file=sys.stderr)
        code = code or 1
    return code
