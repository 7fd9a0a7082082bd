"""Spare sandboxes: warm sandboxes started ahead, taken at once by an unnamed create."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from infra.host import domains, images
from infra.host.libvirt_host import connect, lookup
from infra.machines import janitor, sandbox_records, sandboxes, spare_fill, spares
from infra.records import store
from infra.settings import FluidSettings
from infra.state import capture
from infra.state.base import kinds
from tests.conftest import fluid_json, leftovers

pytestmark = pytest.mark.vm

SPARES = 2
# Room for the spares, the sandboxes taken from them and their refills, whatever slots other
# modules' session-long sandboxes hold.
WARM_SLOTS = 8
FIRST_COMMAND = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
IDENTITY = (
    "cat /etc/machine-id; cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub; hostname; "
    "cat /etc/ssh/fluid_principals"
)
REFILL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def spare_settings(
    golden_image: images.ImageManifest, settings: FluidSettings
) -> Iterator[FluidSettings]:
    """Settings (and, for the CLI and the refills, the environment) that keep SPARES spares
    waiting."""
    saved = {k: os.environ.get(k) for k in ("FLUID_SPARE_SANDBOXES", "FLUID_WARM_SLOTS")}
    os.environ.update(FLUID_SPARE_SANDBOXES=str(SPARES), FLUID_WARM_SLOTS=str(WARM_SLOTS))
    try:
        yield settings.model_copy(update={"spare_sandboxes": SPARES, "warm_slots": WARM_SLOTS})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        spares.clear(settings)  # waits for a refill still running


def waiting(settings: FluidSettings) -> list[str]:
    return [r.id for r in spares.list_spares(settings, state=spares.WAITING)]


def wait_for_spares(settings: FluidSettings, exclude: set[str]) -> list[str]:
    """The waiting spares once SPARES of them are new (not in `exclude`)."""
    deadline = time.monotonic() + REFILL_TIMEOUT_S
    while time.monotonic() < deadline:
        fresh = [sid for sid in waiting(settings) if sid not in exclude]
        if len(fresh) >= SPARES:
            return fresh
        time.sleep(2)
    log = (settings.logs_dir / "spares.log").read_text()[-2000:]
    raise AssertionError(f"no {SPARES} new spares within {REFILL_TIMEOUT_S} s; spares.log:\n{log}")


@pytest.fixture(scope="module")
def taken(spare_settings: FluidSettings) -> Iterator[dict[str, dict]]:
    """Two sandboxes `fluid sandbox create` took from the spares, by id: (spares, the JSON)."""
    before = spare_fill.fill(settings=spare_settings)
    assert len(waiting(spare_settings)) == SPARES, before
    ready = waiting(spare_settings)
    boxes: dict[str, dict] = {}
    try:
        for _ in range(SPARES):
            box = fluid_json("sandbox", "create")
            boxes[box["id"]] = {"spares_before": ready, "json": box}
        yield boxes
    finally:
        for sid in boxes:
            sandboxes.destroy(sid, spare_settings)


def test_unnamed_creates_take_the_waiting_spares_oldest_first(taken):
    (first, a), (second, b) = taken.items()
    assert [first, second] == a["spares_before"]
    assert a["json"]["boot"] == b["json"]["boot"] == "spare"
    assert a["json"]["domain_name"].startswith("fluid-pool-")


def test_a_spare_is_nobodys_sandbox_until_it_is_taken(taken, spare_settings):
    fresh = wait_for_spares(spare_settings, exclude=set(taken))
    listed = {s["id"] for s in fluid_json("sandbox", "list")["sandboxes"]}
    assert set(taken) <= listed
    assert set(fresh) <= {s["id"] for s in fluid_json("pool", "list")["spares"]}
    assert not set(fresh) & listed
    conn = connect(spare_settings)
    try:
        for sid in taken:
            dom = lookup(conn, sandboxes.get(sid, spare_settings).domain_name)
            meta = domains.read_metadata(dom)
            assert (meta.kind, meta.id) == ("sandbox", sid)
            # Taken now, so its TTL runs from now.
            assert datetime.now(UTC) - meta.created_at < timedelta(minutes=5)
    finally:
        conn.close()


def test_two_taken_spares_differ_in_random_bytes_machine_id_host_key_and_name(
    taken, spare_settings
):
    first = [sandboxes.run(s, FIRST_COMMAND, settings=spare_settings).stdout_text for s in taken]
    assert len(first[0]) == 64 and first[0] != first[1]
    seen = []
    for sid in taken:
        machine_id, host_key, hostname, principal = sandboxes.run(
            sid, IDENTITY, settings=spare_settings
        ).stdout_text.splitlines()
        assert host_key == sandbox_records.record(sid, spare_settings).host_key
        assert (hostname, principal) == (sid, f"fluid-{sid}")
        seen.append((machine_id, host_key))
    assert seen[0][0] != seen[1][0] and seen[0][1] != seen[1][1]


def test_a_taken_spare_keeps_the_hosts_clock(taken, spare_settings):
    for sid in taken:
        before = time.time()
        guest = float(sandboxes.run(sid, "date +%s.%N", settings=spare_settings).stdout_text)
        assert before - 0.5 < guest < time.time() + 0.5


def test_taking_spares_starts_new_ones_in_the_background(taken, spare_settings):
    fresh = wait_for_spares(spare_settings, exclude=set(taken))
    assert "spare" in (spare_settings.logs_dir / "spares.log").read_text()
    for sid in fresh:
        rec = sandbox_records.record(sid, spare_settings)
        assert rec.spare_state == spares.WAITING and rec.slot


def test_a_taken_spare_was_captured_before_and_its_first_capture_sees_what_changed(
    taken, spare_settings
):
    """The refill captures each spare while only fluid has run in it, so the taker's first
    capture builds on that and lists only what changed since. (Writes in one taken sandbox.)"""
    sid = next(iter(taken))
    assert capture._memory(kinds()["files"], sid, spare_settings).exists()
    r = sandboxes.run(sid, "echo mine > /srv/after-the-take", settings=spare_settings)
    assert r.exit_status == 0, r.stderr_text
    entries = capture.capture(sid, settings=spare_settings).state("files").entries
    assert entries["/srv/after-the-take"].size == 5


def test_a_named_create_never_takes_a_spare(taken, spare_settings):
    wait_for_spares(spare_settings, exclude=set(taken))
    ready = set(waiting(spare_settings))
    box = sandboxes.create("t-named", settings=spare_settings)
    try:
        assert box.boot != "spare"
        assert set(waiting(spare_settings)) == ready
    finally:
        sandboxes.destroy(box.id, spare_settings)


def test_a_spare_whose_vm_died_is_removed_and_the_sandbox_starts_from_a_slot(taken, spare_settings):
    dead = wait_for_spares(spare_settings, exclude=set(taken))
    conn = connect(spare_settings)
    try:
        for sid in dead:
            lookup(conn, sandbox_records.record(sid, spare_settings).domain_name).destroy()
    finally:
        conn.close()
    said: list[str] = []
    box = sandboxes.create(progress=said.append, settings=spare_settings)
    try:
        assert box.boot == "warm", said
        for sid in dead:
            assert any(f"spare {sid} is not usable" in line for line in said), said
            assert leftovers(sid, spare_settings) == []
        assert sandboxes.run(box.id, "hostname", settings=spare_settings).stdout_text.strip() == (
            box.id
        )
    finally:
        sandboxes.destroy(box.id, spare_settings)


def test_the_janitor_reaps_an_expired_spare_and_pool_clear_stops_the_rest(taken, spare_settings):
    first, *rest = wait_for_spares(spare_settings, exclude=set(taken))
    with store.session(spare_settings) as s:
        rec = s.get(store.SandboxRecord, first)
        rec.expires_at = datetime.now(UTC) - timedelta(minutes=1)
        s.add(rec)
    report = janitor.sweep(grace_s=600, settings=spare_settings)
    assert [r.sandbox_id for r in report.reaped] == [first]
    assert leftovers(first, spare_settings) == []

    # `fluid pool clear` would also remove the idle slots later test modules restore.
    stopped = spares.clear(spare_settings)
    assert set(rest) <= set(stopped)
    assert fluid_json("pool", "list")["spares"] == []
    for sid in stopped:
        assert leftovers(sid, spare_settings) == []
    # The taken sandboxes are not spares: clear leaves them running.
    for sid in taken:
        assert sandboxes.get(sid, spare_settings).state == "running"
