"""Two hosts on one store leave each other alone: A's janitor, spares, ports and listings see
only A's records (and those from before fluid knew hosts), and a command on A for B's sandbox
says where it lives instead of reaching for a forward that is not on A's loopback.

No VMs: host B's sandboxes are records only (B's libvirt is another machine's), and host A
speaks to libvirt's built-in test driver, which holds no fluid domain.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from infra.errors import OnAnotherHost
from infra.host import ports
from infra.host.libvirt_host import connection
from infra.machines import janitor, sandbox_records, sandboxes, spares
from infra.records import hosts, runs, store
from infra.records.store import SandboxRecord
from infra.settings import FluidSettings
from tests.records import add_sandbox_record


def settings_of(host: str, tmp_path: Path) -> FluidSettings:
    """Host `host`'s settings: its own home and storage, the one shared database."""
    return FluidSettings(
        host_id=host,
        home=tmp_path / host / "home",
        storage_dir=tmp_path / host / "storage",
        database_url=f"sqlite:///{tmp_path / 'shared.db'}",
        libvirt_uri="test:///default",
    )


@pytest.fixture
def cluster(tmp_path: Path) -> tuple[FluidSettings, FluidSettings]:
    return settings_of("host-a", tmp_path), settings_of("host-b", tmp_path)


def ids(records: list[SandboxRecord]) -> set[str]:
    return {r.id for r in records}


def test_a_janitor_reaps_only_its_own_hosts_sandboxes(cluster) -> None:
    a, b = cluster
    add_sandbox_record("aaaa0001", "host-a", port=22301, expired=True, settings=a)
    # B's: expired, owned by a process A cannot see, and with no VM on A's libvirt.
    add_sandbox_record("bbbb0001", "host-b", port=22401, expired=True, settings=b)
    add_sandbox_record("bbbb0002", "host-b", port=22402, owner_pid=999_999_999, settings=b)
    add_sandbox_record("bbbb0003", "host-b", port=22403, settings=b)

    report = janitor.sweep(lambda _run: "active", grace_s=0, settings=a)

    assert {r.sandbox_id for r in report.reaped} == {"aaaa0001"}
    assert report.errors == []
    with store.session(b) as s:
        left = {r.id for r in s.exec(select(SandboxRecord))}
    assert left == {"bbbb0001", "bbbb0002", "bbbb0003"}


def test_spares_ports_and_listings_are_per_host(cluster) -> None:
    a, b = cluster
    add_sandbox_record("aaaa0002", "host-a", port=22311, spare=spares.WAITING, settings=a)
    add_sandbox_record("bbbb0004", "host-b", port=22411, spare=spares.WAITING, settings=b)
    add_sandbox_record("bbbb0005", "host-b", port=22412, settings=b)
    # A record from before fluid knew hosts counts as every host's.
    add_sandbox_record("0ld00001", None, port=22500, settings=a)

    assert ids(spares.list_spares(a)) == {"aaaa0002"}
    assert ids(spares.list_spares(b)) == {"bbbb0004"}
    with connection(a) as conn:
        assert ports.reserved(conn, a) == {22311, 22500}
    listed = {sb.id for sb in sandboxes.list_sandboxes(a).sandboxes}
    assert listed == {"0ld00001"}  # aaaa0002 is a spare: `fluid pool list` shows it


def test_a_command_for_another_hosts_sandbox_names_that_host(cluster) -> None:
    a, b = cluster
    add_sandbox_record("bbbb0006", "host-b", port=22421, settings=b)

    with pytest.raises(OnAnotherHost, match="lives on host 'host-b'.*this is host 'host-a'"):
        sandboxes.get("bbbb0006", a)
    assert sandbox_records.record("bbbb0006", b).host_id == "host-b"


def test_a_run_records_the_host_it_started_on(cluster) -> None:
    a, b = cluster

    runs.start("00000000-0000-0000-0000-0000000000aa", "task", "prod", a)

    assert runs.get("00000000-0000-0000-0000-0000000000aa", b).host_id == "host-a"


def test_a_host_marked_down_loses_only_its_own_sandboxes_and_names_its_open_runs(cluster) -> None:
    a, b = cluster
    hosts.add("host-a", settings=a)
    hosts.add("host-b", settings=b)
    add_sandbox_record("aaaa0010", "host-a", port=22331, settings=a)
    add_sandbox_record("bbbb0010", "host-b", port=22431, settings=b)
    runs.start("00000000-0000-0000-0000-0000000000b1", "task", "prod", b)
    runs.start("00000000-0000-0000-0000-0000000000b2", "task", "prod", b)
    runs.finish("00000000-0000-0000-0000-0000000000b2", "applied", "done", b)
    runs.start("00000000-0000-0000-0000-0000000000a1", "task", "prod", a)

    down = hosts.mark_down("host-b", "its worker stopped polling", a)

    assert down.was == "ready"
    assert down.lost_sandboxes == ["bbbb0010"]
    assert down.open_runs == ["00000000-0000-0000-0000-0000000000b1"]
    assert hosts.get("host-b", a).state == "down"
    assert hosts.get("host-a", a).state == "ready"
    assert sandbox_records.record("aaaa0010", a).lost is None
    # A's janitor still leaves B's lost sandbox alone; B's own janitor, back, removes it.
    assert "bbbb0010" not in {r.sandbox_id for r in janitor.sweep(None, settings=a).reaped}
    reaped = janitor.sweep(None, settings=b).reaped
    assert [(r.sandbox_id, r.reason) for r in reaped] == [
        ("bbbb0010", "lost while this host was down (its worker stopped polling)")
    ]
