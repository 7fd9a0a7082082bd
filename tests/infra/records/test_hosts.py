"""The hosts table's counts: sandboxes per host, records from before hosts counted for the
host that asks, and sandboxes lost with a dead host not counted at all."""

from __future__ import annotations

from pathlib import Path

from infra.records import hosts
from infra.settings import FluidSettings
from tests.records import add_sandbox_record


def settings_of(host: str, tmp_path: Path) -> FluidSettings:
    return FluidSettings(
        host_id=host, home=tmp_path / host, database_url=f"sqlite:///{tmp_path / 'shared.db'}"
    )


def test_sandboxes_are_counted_per_host_and_older_records_for_the_host_asking(tmp_path):
    a, b = settings_of("host-a", tmp_path), settings_of("host-b", tmp_path)
    add_sandbox_record("a1", "host-a", a)
    add_sandbox_record("b1", "host-b", a)
    add_sandbox_record("b2", "host-b", a)
    add_sandbox_record("old", None, a)
    add_sandbox_record("lost", "host-b", a, lost="host-b was marked down")

    assert hosts.sandbox_counts(a) == {"host-a": 2, "host-b": 2}
    assert hosts.sandbox_counts(b) == {"host-a": 1, "host-b": 3}


def test_a_new_host_gets_its_queue_and_the_configured_capacity(tmp_path):
    settings = settings_of("host-a", tmp_path).model_copy(update={"max_sandboxes": 5})

    h = hosts.add("hv-9", settings=settings)

    assert (h.work_queue, h.state, h.max_sandboxes) == ("host-hv-9", "ready", 5)
