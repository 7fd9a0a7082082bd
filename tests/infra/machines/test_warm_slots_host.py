"""Warm slots, the host side: clearing the pool never removes a slot under its preparer."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.machines import warm_slots
from infra.settings import FluidSettings

SLOT = "0123abcd-0"


@pytest.fixture
def local(settings: FluidSettings, tmp_path: Path) -> FluidSettings:
    """The session's settings with a storage directory of the test's own."""
    return settings.model_copy(update={"storage_dir": tmp_path})


def test_clear_leaves_a_slot_that_is_being_prepared_and_removes_it_afterwards(local):
    pool = warm_slots.pool_dir(local)
    pool.mkdir(parents=True)
    for suffix in ("qcow2", "save", "json"):
        (pool / f"{SLOT}.{suffix}").write_text("saved")

    with warm_slots.PreparationLock(SLOT, local):
        assert warm_slots.clear(local) == []
        assert sorted(p.name for p in pool.iterdir()) == [
            f"{SLOT}.json",
            f"{SLOT}.lock",
            f"{SLOT}.qcow2",
            f"{SLOT}.save",
        ]

    assert warm_slots.clear(local) == [SLOT]
    assert not pool.exists()
