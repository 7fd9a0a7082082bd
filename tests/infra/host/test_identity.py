"""A host's id: FLUID_HOST_ID when set (and well-formed), else one made once and kept in
FLUID_HOME/host-id, the same for every call and every process on that home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.errors import SettingsError
from infra.host import identity
from infra.host.identity import BadHostId, check, host_id
from infra.settings import FluidSettings

ROOT = Path(__file__).resolve().parents[3]


def settings_at(home: Path, **kw: object) -> FluidSettings:
    return FluidSettings(home=home, **kw)


def id_from_another_process(home: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FLUID_HOST_ID"}
    env |= {"FLUID_HOME": str(home), "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", "from infra.host.identity import host_id; print(host_id())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return r.stdout.strip()


def test_the_kept_id_is_the_same_across_calls_and_processes(tmp_path: Path):
    home = tmp_path / "home"

    first = host_id(settings_at(home))

    assert check(first) == first
    assert host_id(settings_at(home)) == first
    assert (home / "host-id").read_text().strip() == first
    assert id_from_another_process(home) == first


def test_another_home_is_another_host(tmp_path: Path):
    assert host_id(settings_at(tmp_path / "a")) != host_id(settings_at(tmp_path / "b"))


def test_an_id_made_by_another_process_first_is_the_one_used(tmp_path: Path):
    home = tmp_path / "home"

    made_elsewhere = id_from_another_process(home)

    assert host_id(settings_at(home)) == made_elsewhere


def test_fluid_host_id_wins_over_the_kept_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    kept = host_id(settings_at(home))
    monkeypatch.setenv("FLUID_HOST_ID", "hv-7")

    assert host_id(FluidSettings(home=home)) == "hv-7"
    assert (home / "host-id").read_text().strip() == kept  # untouched


@pytest.mark.parametrize("bad", ["Upper", "-lead", "has space", "a_b", "x" * 64, "../etc"])
def test_a_malformed_fluid_host_id_is_refused_by_the_settings(
    monkeypatch: pytest.MonkeyPatch, bad: str
):
    monkeypatch.setenv("FLUID_HOST_ID", bad)
    with pytest.raises(SettingsError, match="FLUID_HOST_ID="):
        FluidSettings()


@pytest.mark.parametrize("bad", ["Upper", "-lead", "a.b", "x" * 64, "../etc"])
def test_check_refuses_what_is_not_a_host_id(bad: str):
    with pytest.raises(BadHostId, match="is not a host id"):
        identity.check(bad)
