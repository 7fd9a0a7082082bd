"""Warm starts: sandboxes restored from saved, booted VMs, each with an identity of its own."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.host import domains, images
from infra.host.libvirt_host import connect, lookup
from infra.machines import sandbox_records, sandboxes, warm_slots
from infra.settings import FluidSettings
from tests.conftest import leftovers

pytestmark = pytest.mark.vm

FIRST_COMMAND = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
IDENTITY = (
    "cat /etc/machine-id; cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub; hostname; "
    "cat /etc/ssh/fluid_principals; date +%s.%N"
)


@pytest.fixture(scope="module")
def warm_pair(
    golden_image: images.ImageManifest, settings: FluidSettings
) -> Iterator[dict[str, str]]:
    """Two sandboxes restored from two saved slots; the first command each ran, by id."""
    # Three slots: the pair, and one more for the destroy-and-reuse test. Later test modules
    # of the session restore the same slots.
    warm_slots.fill(3, settings=settings)
    time.sleep(5)  # the saved guests' clocks are now visibly behind the host's
    boxes = []
    first: dict[str, str] = {}
    try:
        for _ in range(2):
            said: list[str] = []
            box = sandboxes.create(progress=said.append, settings=settings)
            boxes.append(box)
            assert box.boot == "warm", said
            first[box.id] = sandboxes.run(box.id, FIRST_COMMAND, settings=settings).stdout_text
        yield first
    finally:
        for box in boxes:
            sandboxes.destroy(box.id, settings)


def test_sandboxes_start_warm_in_slot_domains_that_name_the_sandbox(warm_pair, settings):
    conn = connect(settings)
    try:
        for sid in warm_pair:
            box = sandboxes.get(sid, settings)
            assert (box.boot, box.state) == ("warm", "running")
            assert box.domain_name.startswith("fluid-pool-")
            meta = domains.read_metadata(lookup(conn, box.domain_name))
            assert (meta.kind, meta.id, meta.store) == ("sandbox", sid, settings.store_id)
    finally:
        conn.close()
    assert len({sandboxes.get(sid, settings).domain_name for sid in warm_pair}) == 2


def test_two_warm_sandboxes_read_different_random_bytes_on_their_first_command(warm_pair):
    a, b = warm_pair.values()
    assert len(a) == len(b) == 64
    assert a != b


def test_each_warm_sandbox_has_its_own_machine_id_host_key_hostname_and_principal(
    warm_pair, settings
):
    seen = []
    for sid in warm_pair:
        machine_id, host_key, hostname, principal, _clock = sandboxes.run(
            sid, IDENTITY, settings=settings
        ).stdout_text.splitlines()
        assert len(machine_id) == 32
        assert host_key == sandbox_records.record(sid, settings).host_key
        assert (hostname, principal) == (sid, f"fluid-{sid}")
        seen.append((machine_id, host_key))
    assert seen[0][0] != seen[1][0], "machine-ids differ"
    assert seen[0][1] != seen[1][1], "SSH host keys differ"


def test_a_warm_sandbox_keeps_the_hosts_clock_although_its_slot_was_saved_earlier(
    warm_pair, settings
):
    oldest_save = min(s.saved_at.timestamp() for s in warm_slots.list_slots(settings))
    assert time.time() - oldest_save > 5, "the saved state is old enough to show a stale clock"
    for sid in warm_pair:
        before = time.time()
        guest = float(sandboxes.run(sid, "date +%s.%N", settings=settings).stdout_text)
        assert before - 2 < guest < time.time() + 2


def test_when_every_slot_is_in_use_a_sandbox_boots_cold_and_says_why(warm_pair, settings):
    capped = settings.model_copy(update={"warm_slots": 2})
    said: list[str] = []
    box = sandboxes.create(progress=said.append, settings=capped)
    try:
        assert box.boot == "cold"
        assert box.domain_name == sandbox_records.domain_name(box.id)
        assert any("cold boot (all 2 warm slots are in use" in line for line in said), said
        assert sandboxes.run(box.id, "hostname", settings=settings).stdout_text.strip() == box.id
    finally:
        sandboxes.destroy(box.id, settings)


def test_a_destroyed_warm_sandbox_leaves_nothing_running_and_its_slot_serves_the_next(
    warm_pair, settings
):
    box = sandboxes.create(settings=settings)
    slot = sandbox_records.record(box.id, settings).slot
    assert box.boot == "warm" and slot
    sandboxes.destroy(box.id, settings)

    conn = connect(settings)
    try:
        assert lookup(conn, box.domain_name) is None
    finally:
        conn.close()
    assert leftovers(box.id, settings) == []
    assert slot in {s.name for s in warm_slots.list_slots(settings) if s.in_use_by is None}

    again = sandboxes.create(settings=settings)
    try:
        assert (again.boot, again.domain_name) == ("warm", box.domain_name)
        assert again.id != box.id
    finally:
        sandboxes.destroy(again.id, settings)


def _forward_ports(settings: FluidSettings) -> set[int]:
    """Ports listening in fluid's forward range; the session's other servers come and go."""
    low, high = settings.port_range
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if low <= port <= high:
                    ports.add(port)
    return ports


def _footprint(settings: FluidSettings) -> dict[str, object]:
    # Unreachable cycles (an earlier test's clients) close their files only when collected.
    gc.collect()
    conn = connect(settings)
    try:
        names = sorted(d.name() for d in conn.listAllDomains())
    finally:
        conn.close()
    rss_kib = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return {
        "rss_kib": rss_kib,
        "fds": len(os.listdir("/proc/self/fd")),
        "domains": names,
        "disks": sorted(os.listdir(settings.disks_dir)),
        "logs": sorted(os.listdir(settings.logs_dir)),
        "slots": sorted(os.listdir(warm_slots.pool_dir(settings))),
        "ports": sorted(_forward_ports(settings)),
        "sandboxes": sorted(s.id for s in sandboxes.list_sandboxes(settings).sandboxes),
    }


@pytest.mark.timeout(2400)
def test_a_hundred_create_destroy_cycles_leak_nothing(warm_pair, settings):
    def cycle() -> None:
        said: list[str] = []
        box = sandboxes.create(progress=said.append, settings=settings)
        try:
            assert box.boot == "warm", said
            assert sandboxes.run(box.id, "true", settings=settings).exit_status == 0
        finally:
            sandboxes.destroy(box.id, settings)

    for _ in range(5):  # caches, engines and lazily imported modules settle first
        cycle()
    start = _footprint(settings)
    started = time.monotonic()
    for _ in range(100):
        cycle()
    end = _footprint(settings)
    print(
        f"\n100 cycles in {time.monotonic() - started:.0f} s; fluid process RSS "
        f"{start['rss_kib'] // 1024} -> {end['rss_kib'] // 1024} MiB, fds {start['fds']} -> "
        f"{end['fds']}"
    )
    for key in ("domains", "disks", "logs", "slots", "ports", "sandboxes"):
        assert end[key] == start[key], key
    # Not one more: files an earlier test's threads still held may close during the cycles.
    assert end["fds"] <= start["fds"]
    # Python's allocator keeps some freed memory; a leak of one connection or capture per
    # cycle would be tens of MiB over 100 cycles.
    assert end["rss_kib"] - start["rss_kib"] < 8 * 1024
