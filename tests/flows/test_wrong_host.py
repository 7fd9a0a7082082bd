"""A run placed on one host and started on another fails at once, naming both hosts, before
it records anything or boots a VM. The flow's function is called without Prefect's engine:
the check comes before anything Prefect or fluid's store would do."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from flows.agent_task import agent_task
from infra.errors import WrongHost
from infra.records import store
from infra.records.store import AgentRunRecord
from infra.settings import get_settings


@pytest.fixture
def on_host_a(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLUID_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLUID_DATABASE_URL", f"sqlite:///{tmp_path / 'fluid.db'}")
    monkeypatch.setenv("FLUID_HOST_ID", "host-a")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_a_run_placed_on_another_host_fails_fast_naming_both(on_host_a):
    agent = {"kind": "scripted", "steps": [{"run": "true"}]}

    with pytest.raises(WrongHost, match="placed on host 'host-b' but started on host 'host-a'"):
        agent_task.fn(task="t", production="p", agent=agent, host="host-b")

    with store.session() as s:
        assert s.exec(select(AgentRunRecord)).all() == []
