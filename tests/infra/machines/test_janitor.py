"""The janitor: expired sandboxes and orphans in either direction go; nothing else is touched."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import libvirt
import pytest

from infra.host import domains
from infra.host.libvirt_host import connect, lookup, remove_domain
from infra.machines import janitor, sandbox_records, sandboxes, warm_slots
from infra.machines.owners import Owner
from infra.records import store
from infra.records.store import SandboxRecord
from infra.settings import FluidSettings
from tests.conftest import leftovers


def _blank_disk(path: Path, age_s: float = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    if age_s:
        old = time.time() - age_s
        os.utime(path, (old, old))
    return path


def _define(
    conn: libvirt.virConnect,
    name: str,
    kind: str | None,
    disk: Path,
    settings,
    store_id: str | None = None,
) -> None:
    """A defined (never started) VM, with fluid metadata of `kind` or none at all."""
    spec = domains.DomainSpec(
        name=name,
        metadata=domains.FluidMetadata(
            kind=kind or "sandbox",
            id=name.removeprefix(sandbox_records.DOMAIN_PREFIX),
            created_at=datetime.now(UTC) - timedelta(hours=1),
            store=store_id or settings.store_id,
        ),
        domain_type="qemu",
        memory_mib=256,
        vcpus=1,
        tb_cache_mib=32,
        disk_path=disk,
        console_log=settings.logs_dir / f"{name}.console.log",
        ssh_port=1,
        network="isolated",
    )
    xml = domains.render(spec)
    if kind is None:  # a domain some other tool made
        start, end = xml.index("<metadata>"), xml.index("</metadata>") + len("</metadata>")
        xml = xml[:start] + xml[end:]
    conn.defineXML(xml)


@pytest.fixture
def foreign_and_production_domains(settings: FluidSettings) -> Iterator[list[str]]:
    """Domains the janitor must leave alone: another tool's, a production VM's, and a sandbox
    of another fluid database."""
    conn = connect(settings)
    names = ["not-fluid-jt", "fluid-prod-jt", sandbox_records.domain_name("jt-other")]
    _define(conn, names[0], None, _blank_disk(settings.storage_dir / "jt" / "a.qcow2"), settings)
    _define(
        conn, names[1], "production", _blank_disk(settings.storage_dir / "jt" / "b.qcow2"), settings
    )
    # A sandbox of another FLUID_HOME (another database) on the same host, with its disk.
    other_disk = _blank_disk(settings.disks_dir / "jt-other.qcow2", age_s=3600)
    _define(conn, names[2], "sandbox", other_disk, settings, store_id="another-db")
    try:
        yield names
    finally:
        for n in names:
            dom = lookup(conn, n)
            if dom is not None:
                dom.undefine()
        for p in (settings.storage_dir / "jt").glob("*"):
            p.unlink()
        other_disk.unlink(missing_ok=True)
        conn.close()


def _record(sid: str, settings: FluidSettings, **fields) -> SandboxRecord:
    values = {
        "id": sid,
        "domain_name": sandbox_records.domain_name(sid),
        "image": "debian-12",
        "image_version": "v1",
        "network": "isolated",
        "ssh_port": 1,
        "disk_path": str(settings.disks_dir / f"{sid}.qcow2"),
        "console_log": str(settings.logs_dir / f"{sid}.console.log"),
        "created_at": datetime.now(UTC) - timedelta(hours=1),
        "expires_at": datetime.now(UTC) + timedelta(hours=1),
    } | fields
    rec = SandboxRecord(**values)
    with store.session(settings) as s:
        s.add(rec)
    return rec


def test_janitor_reaps_expired_sandboxes_and_orphans_only(
    settings: FluidSettings, foreign_and_production_domains: list[str]
) -> None:
    """Expired sandbox, VM without record, record without VM, lone disk: all go; others stay."""
    conn = connect(settings)
    fresh = _blank_disk(settings.disks_dir / "jt-fresh.qcow2")  # maybe a sandbox being made
    try:
        for sid in ("jt-expired", "jt-novm"):
            disk = _blank_disk(settings.disks_dir / f"{sid}.qcow2")
            _define(conn, sandbox_records.domain_name(sid), "sandbox", disk, settings)
        _record("jt-expired", settings, expires_at=datetime.now(UTC) - timedelta(minutes=1))
        _record("jt-norec", settings)
        lone = _blank_disk(settings.disks_dir / "jt-lone.qcow2", age_s=3600)

        report = janitor.sweep(lambda _run: "active", grace_s=600, settings=settings)

        reasons = {r.sandbox_id: r.reason for r in report.reaped}
        assert "past its TTL" in reasons["jt-expired"]
        assert reasons["jt-novm"] == "a VM without a record"
        assert reasons["jt-norec"] == "a record without a VM"
        assert "disk without a record" in reasons["jt-lone"]
        assert "jt-fresh" not in reasons and fresh.exists()
        assert report.errors == []
        for sid in ("jt-expired", "jt-novm", "jt-norec"):
            assert leftovers(sid, settings) == [], sid
        assert not lone.exists()
        for name in foreign_and_production_domains:
            assert lookup(conn, name) is not None, f"{name} was touched"
        assert (settings.disks_dir / "jt-other.qcow2").exists()
    finally:
        fresh.unlink(missing_ok=True)
        conn.close()


def test_janitor_reaps_a_sandbox_once_its_run_has_ended(
    golden_image, settings: FluidSettings
) -> None:
    """A running sandbox whose run waits for approval stays; once the run ends, it goes."""
    phases = {"run-waiting": "waiting", "run-ended": "ended"}
    box = sandboxes.create("jt-owned", owner=Owner(run="run-waiting"), settings=settings)
    try:
        report = janitor.sweep(lambda run: phases[run], grace_s=600, settings=settings)
        assert box.id in report.kept
        assert sandboxes.get(box.id, settings).state == "running"

        sandboxes.set_owner(box.id, Owner(run="run-ended"), settings)
        report = janitor.sweep(lambda run: phases[run], grace_s=600, settings=settings)
        assert [(r.sandbox_id, r.reason) for r in report.reaped] == [
            (box.id, "its flow run run-ended has ended")
        ]
        assert leftovers(box.id, settings) == []
    finally:
        with contextlib.suppress(Exception):
            sandboxes.destroy(box.id, settings)


def test_janitor_removes_an_abandoned_warm_slot_preparation_but_not_one_in_progress(
    settings: FluidSettings,
) -> None:
    """A slot whose preparing process died leaves a pool VM: the janitor removes it and the
    slot's files; a slot still held by its preparation lock is left alone."""
    conn = connect(settings)
    pool = warm_slots.pool_dir(settings)
    pool.mkdir(parents=True, exist_ok=True)
    names = {"dead": "jtpool-0", "busy": "jtpool-1"}
    for name in names.values():
        _blank_disk(pool / f"{name}.qcow2")
        spec_name = warm_slots.DOMAIN_PREFIX + name
        _define(conn, spec_name, "pool", pool / f"{name}.qcow2", settings)
        # _define names the metadata id after the sandbox prefix; a slot's id is its name
        meta = domains.read_metadata(lookup(conn, spec_name))
        meta.id = name
        domains.write_metadata(lookup(conn, spec_name), meta)
    lock = warm_slots.PreparationLock(names["busy"], settings)
    try:
        report = janitor.sweep(lambda _run: "active", grace_s=600, settings=settings)
        reasons = {r.sandbox_id: r.reason for r in report.reaped}
        assert reasons.get(names["dead"]) == "an abandoned warm-slot preparation"
        assert names["busy"] not in reasons
        assert lookup(conn, warm_slots.DOMAIN_PREFIX + names["dead"]) is None
        assert not (pool / f"{names['dead']}.qcow2").exists()
        assert lookup(conn, warm_slots.DOMAIN_PREFIX + names["busy"]) is not None
    finally:
        lock.release()
        for name in names.values():
            remove_domain(conn, warm_slots.DOMAIN_PREFIX + name)
            warm_slots.discard(name, settings)
            (pool / f"{name}.lock").unlink(missing_ok=True)
        conn.close()
