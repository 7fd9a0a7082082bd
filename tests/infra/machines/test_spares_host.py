"""Spare sandboxes, the host side: one refill at a time, and a refill log that stays small."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from infra.host.file_locks import FileLock
from infra.machines import spares
from infra.settings import FluidSettings, environment


@pytest.fixture
def local(settings: FluidSettings, tmp_path: Path) -> FluidSettings:
    """The session's settings with a storage directory of the test's own."""
    return settings.model_copy(update={"storage_dir": tmp_path})


def test_a_refill_that_waited_through_a_clear_still_excludes_the_next_one(local):
    # `clear` unlinks the lock file it holds. A process that was waiting on that file must not
    # end up holding a lock on the unlinked file while the next process locks a new one.
    clearing = spares.fill_lock(local, wait=True)
    waiter: dict[str, FileLock] = {}
    thread = threading.Thread(target=lambda: waiter.update(lock=spares.fill_lock(local, wait=True)))
    thread.start()
    thread.join(0.5)
    assert thread.is_alive(), "the waiter got the lock while it was held"

    clearing.path.unlink()
    clearing.__exit__()
    thread.join(10)
    assert not thread.is_alive()
    with waiter["lock"] as held, spares.fill_lock(local, wait=False) as next_one:
        assert held.held
        assert held.path.exists()
        assert not next_one.held


def test_the_refill_log_moves_aside_once_it_passes_its_limit(local):
    log = local.logs_dir / "spares.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"x" * (spares.LOG_MAX_BYTES + 1))

    path = spares._log_file(local)

    assert path == log and not log.exists()
    assert (local.logs_dir / "spares.log.1").stat().st_size == spares.LOG_MAX_BYTES + 1
    log.write_text("small\n")
    spares._log_file(local)
    assert log.read_text() == "small\n"


def test_a_refill_reads_the_settings_of_whoever_started_it_not_the_environment(local, monkeypatch):
    # The refill is a process of its own that reads FLUID_* variables. A caller with settings
    # of its own (another home, no database URL) must not have spares filled elsewhere.
    monkeypatch.setenv("FLUID_DATABASE_URL", "sqlite:////nowhere/else.db")
    monkeypatch.setenv("FLUID_HOME", "/nowhere/else")
    mine = local.model_copy(update={"spare_sandboxes": 3, "port_range": (23000, 23099)})
    code = "from infra.settings import FluidSettings as S; print(S().model_dump_json())"
    read_back = subprocess.run(
        [sys.executable, "-c", code],
        env=environment(mine),
        capture_output=True,
        text=True,
        check=True,
    )
    assert FluidSettings.model_validate_json(read_back.stdout) == mine
