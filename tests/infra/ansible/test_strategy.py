"""Which Ansible strategy applies and replays use: Ansible's linear by default, Mitogen's
when chosen (an optional extra), and a clear error when chosen but not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infra.ansible.playbook_runs import run_playbook, strategy_environment
from infra.settings import FluidSettings
from infra.state.base import ChangeSet
from infra.state.export import export
from tests.ansible_lint import lint_playbook


def test_applies_use_ansibles_linear_strategy_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("FLUID_ANSIBLE_STRATEGY", raising=False)
    settings = FluidSettings(home=tmp_path / "home")
    assert settings.ansible_strategy == "linear"
    assert strategy_environment(settings.ansible_strategy) == {"ANSIBLE_STRATEGY": "linear"}
    playbook = export(ChangeSet(sandbox_id="empty"), tmp_path / "playbook", settings)
    lint_playbook(playbook)
    # No hosts: ansible-playbook (the installed ansible-core) runs the play and matches none.
    run = run_playbook(playbook, [], settings=settings, workdir=tmp_path)
    assert run.succeeded, run.output_tail
    assert "PLAY [Fluid change from empty]" in run.output_tail


def test_mitogen_when_chosen_runs_its_strategy_plugin(tmp_path, monkeypatch):
    mitogen = pytest.importorskip("ansible_mitogen", reason="the optional mitogen extra")
    monkeypatch.setenv("FLUID_ANSIBLE_STRATEGY", "mitogen")
    settings = FluidSettings(home=tmp_path / "home")
    env = strategy_environment(settings.ansible_strategy)
    assert env["ANSIBLE_STRATEGY"] == "mitogen_linear"
    plugins = Path(env["ANSIBLE_STRATEGY_PLUGINS"])
    assert plugins.is_relative_to(Path(mitogen.__file__).parent)
    assert (plugins / "mitogen_linear.py").is_file()


def test_mitogen_chosen_but_not_installed_is_an_error_saying_what_to_install():
    # A None entry in sys.modules is how Python itself makes an import fail (ImportError),
    # as it does where the extra is not installed.
    code = (
        "import sys; sys.modules['ansible_mitogen'] = None\n"
        "from infra.ansible.playbook_runs import MitogenNotInstalled, strategy_environment\n"
        "try:\n"
        "    strategy_environment('mitogen')\n"
        "except MitogenNotInstalled as e:\n"
        "    print('refused:', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("refused: FLUID_ANSIBLE_STRATEGY=mitogen"), r.stdout
    assert "fluid[mitogen]" in r.stdout
