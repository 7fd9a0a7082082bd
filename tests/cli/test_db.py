"""`fluid db upgrade`: brings the configured store to the newest schema and says so; a new
FLUID_HOME's store starts there. No VMs and no Prefect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import inspect

from cli.main import main
from infra.records import schema
from infra.settings import get_settings
from tests.records import previous_release


@pytest.fixture
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """This test's own FLUID_HOME; its database is the default one under it."""
    monkeypatch.setenv("FLUID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FLUID_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def test_upgrade_brings_a_previous_release_store_to_the_newest_revision(
    own_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    old = previous_release("sqlite", tmp_path, "old")
    monkeypatch.setenv("FLUID_DATABASE_URL", old.url.render_as_string())
    get_settings.cache_clear()

    assert main(["db", "upgrade"]) == 0

    assert f"at revision {schema.HEAD}" in capsys.readouterr().out
    assert schema.revision(old) == schema.HEAD
    assert "hosts" in inspect(old).get_table_names()


def test_a_new_home_store_is_at_the_newest_revision(
    own_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["db", "upgrade", "--json"]) == 0

    out = json.loads(capsys.readouterr().out)
    assert out["revision"] == out["head"] == schema.HEAD
    assert out["database"] == f"sqlite:///{own_home / 'fluid.db'}"
