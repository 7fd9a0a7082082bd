"""A sandbox's record and everything it leaves on the host, found and removed in one place.

Sandboxes, spares, checkpoints and the janitor all look sandboxes up and tear them down; they
share this module, which imports none of them.
"""

from __future__ import annotations

import secrets
import shutil

import libvirt
from sqlmodel import delete

from infra.errors import OnAnotherHost, SandboxNotFound
from infra.host import domains
from infra.host.identity import host_id
from infra.host.libvirt_host import lookup, remove_domain
from infra.records import store
from infra.records.store import CheckpointRecord, SandboxRecord
from infra.settings import FluidSettings

DOMAIN_PREFIX = "fluid-sbx-"


def domain_name(sandbox_id: str) -> str:
    """The libvirt domain a cold-booted sandbox gets (a warm one keeps its slot's)."""
    return DOMAIN_PREFIX + sandbox_id


def record(sandbox_id: str, settings: FluidSettings) -> SandboxRecord:
    """A sandbox's database record; SandboxNotFound when there is none, OnAnotherHost when it
    lives on another host (its SSH forward is on that host's 127.0.0.1, not this one's)."""
    with store.session(settings) as s:
        rec = s.get(SandboxRecord, sandbox_id)
    if rec is None:
        raise SandboxNotFound(f"no sandbox {sandbox_id!r}; `fluid sandbox list` shows them")
    if rec.host_id not in (None, host_id(settings)):
        raise OnAnotherHost(
            f"sandbox {sandbox_id!r} lives on host {rec.host_id!r}; run this there "
            f"(this is host {host_id(settings)!r})"
        )
    return rec


def new_id(settings: FluidSettings) -> str:
    """A random sandbox id no record has yet."""
    while True:
        candidate = secrets.token_hex(4)
        with store.session(settings) as s:
            if s.get(SandboxRecord, candidate) is None:
                return candidate


def domain_metadata(rec: SandboxRecord, settings: FluidSettings) -> domains.FluidMetadata:
    """The fluid metadata a sandbox's domain carries (how the janitor and spares find it)."""
    return domains.FluidMetadata(
        kind="sandbox",
        id=rec.id,
        agent_id=rec.agent_id,
        expires_at=rec.expires_at,
        created_at=rec.created_at,
        store=settings.store_id,
        host=rec.host_id,
    )


def _domain_of(conn: libvirt.virConnect, sandbox_id: str, settings: FluidSettings) -> str:
    """The name of a sandbox's domain: its record's, else found by fluid's metadata."""
    with store.session(settings) as s:
        rec = s.get(SandboxRecord, sandbox_id)
    if rec is not None:
        return rec.domain_name
    if lookup(conn, domain_name(sandbox_id)) is None:
        for dom, meta in domains.fluid_domains(conn, "sandbox"):
            if meta.id == sandbox_id and meta.is_of(settings.store_id, host_id(settings)):
                return dom.name()
    return domain_name(sandbox_id)


def teardown(conn: libvirt.virConnect, sandbox_id: str, settings: FluidSettings) -> bool:
    """Remove every trace of a sandbox; True when anything existed.

    A warm sandbox's domain goes entirely (destroyed and undefined); its slot's saved state
    stays for the next sandbox. Its captures go too; its recorded commands stay (audit).
    """
    found = remove_domain(conn, _domain_of(conn, sandbox_id, settings))
    for path in (
        settings.disks_dir / f"{sandbox_id}.qcow2",
        settings.disks_dir / f"{sandbox_id}.seed.iso",
        settings.disks_dir / f"{sandbox_id}.fork.qcow2",
        settings.logs_dir / f"{sandbox_id}.console.log",
    ):
        if path.exists():
            found = True
            path.unlink()
    shutil.rmtree(settings.captures_dir / sandbox_id, ignore_errors=True)
    with store.session(settings) as s:
        if s.get(SandboxRecord, sandbox_id) is not None:
            found = True
        s.exec(delete(CheckpointRecord).where(CheckpointRecord.sandbox_id == sandbox_id))
        s.exec(delete(SandboxRecord).where(SandboxRecord.id == sandbox_id))
    return found
