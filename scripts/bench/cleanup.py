"""Shared by the benchmark scripts: destroy their sandboxes and prove nothing is left."""

from __future__ import annotations

import libvirt

from bench.results import log
from infra.errors import SandboxNotFound
from infra.host import domains
from infra.host.libvirt_host import connect, lookup
from infra.machines import sandbox_records, sandboxes
from infra.settings import FluidSettings


def destroy_quietly(sandbox_id: str, settings: FluidSettings) -> str | None:
    """Destroy sandbox `sandbox_id` if anything of it is left; an error message or None."""
    try:
        sandboxes.destroy(sandbox_id, settings)
        log(f"cleanup: destroyed sandbox {sandbox_id}")
    except SandboxNotFound:
        pass
    except Exception as e:  # report it and keep cleaning up
        return f"could not destroy sandbox {sandbox_id}: {e}"
    return None


def leftovers(ids: list[str], settings: FluidSettings) -> list[str]:
    """Anything still left of the benchmark's sandboxes: domains, disks, console logs."""
    out: list[str] = []
    conn = connect(settings)
    try:
        out += [
            f"domain {sandbox_records.domain_name(i)}"
            for i in ids
            if lookup(conn, sandbox_records.domain_name(i)) is not None
        ]
    finally:
        conn.close()
    for d in (settings.disks_dir, settings.logs_dir):
        if d.is_dir():
            out += [str(p) for i in ids for p in d.glob(f"{i}.*")]
    return out


def remove_store_domains(settings: FluidSettings) -> list[str]:
    """Remove every domain whose fluid metadata names this benchmark's database; their names.

    The benchmark's database is its own, so anything still tagged with it (a sandbox whose
    record was never written, a warm slot's domain) is a leftover of this run.
    """
    removed: list[str] = []
    conn = connect(settings)
    try:
        for dom, meta in domains.fluid_domains(conn):
            if meta.store != settings.store_id:
                continue
            name = dom.name()
            try:
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
            except libvirt.libvirtError:
                if lookup(conn, name) is not None:
                    raise
            removed.append(name)
    finally:
        conn.close()
    return removed
