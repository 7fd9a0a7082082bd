"""`fluid host add|list|drain|ready`: the hosts table from the command line, with each host's
sandboxes counted, and clear errors (exit 1) for a bad id, a bad label or an unknown host.

No VMs and no Prefect: a private FLUID_HOME and SQLite database per test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from infra.settings import get_settings
from tests.records import add_sandbox_record

HERE = "here"


@pytest.fixture(autouse=True)
def own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """This test's own FLUID_HOME and database, on a host called HERE."""
    monkeypatch.setenv("FLUID_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLUID_DATABASE_URL", f"sqlite:///{tmp_path / 'fluid.db'}")
    monkeypatch.setenv("FLUID_HOST_ID", HERE)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def fluid(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `fluid ARGV...` run in this process."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def listed(capsys: pytest.CaptureFixture[str]) -> dict[str, dict]:
    code, out, _ = fluid(capsys, "host", "list", "--json")
    assert code == 0
    return {h["id"]: h for h in json.loads(out)["hosts"]}


def test_an_added_host_is_listed_ready_with_its_capacity_labels_and_queue(capsys):
    code, out, _ = fluid(
        capsys, "host", "add", "hv-1", "--max-sandboxes", "12", "--label", "zone=a"
    )
    assert code == 0 and "hv-1" in out

    host = listed(capsys)["hv-1"]
    assert host["state"] == "ready"
    assert host["sandboxes"] == 0
    assert host["max_sandboxes"] == 12
    assert host["labels"] == {"zone": "a"}
    assert host["work_queue"] == "host-hv-1"
    assert "last_heartbeat" in host


def test_add_prints_the_host_as_json(capsys):
    code, out, _ = fluid(capsys, "host", "add", "hv-1", "--json")
    assert code == 0
    assert json.loads(out)["id"] == "hv-1"


def test_the_human_listing_has_a_line_per_host(capsys):
    fluid(capsys, "host", "add", "hv-1")
    fluid(capsys, "host", "add", "hv-2")
    code, out, _ = fluid(capsys, "host", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["ID", "STATE", "SANDBOXES", "MAX"]
    assert [line.split()[0] for line in lines[1:]] == ["hv-1", "hv-2"]


def test_each_host_counts_its_own_sandboxes_and_older_records_count_for_this_host(capsys):
    fluid(capsys, "host", "add", HERE)
    fluid(capsys, "host", "add", "hv-2")
    add_sandbox_record("a1", "hv-2")
    add_sandbox_record("a2", "hv-2")
    add_sandbox_record("old", None)  # from before fluid knew hosts: this host's
    add_sandbox_record("mine", HERE)
    add_sandbox_record("gone", "hv-2", lost="host hv-2 died")  # lost with its host: not in use

    hosts = listed(capsys)

    assert hosts["hv-2"]["sandboxes"] == 2
    assert hosts[HERE]["sandboxes"] == 2


def test_a_drained_host_is_listed_draining_and_ready_undoes_it(capsys):
    fluid(capsys, "host", "add", "hv-1")

    code, _, _ = fluid(capsys, "host", "drain", "hv-1")
    assert code == 0
    assert listed(capsys)["hv-1"]["state"] == "draining"

    code, _, _ = fluid(capsys, "host", "ready", "hv-1")
    assert code == 0
    assert listed(capsys)["hv-1"]["state"] == "ready"


def test_adding_a_drained_host_again_changes_its_capacity_but_keeps_it_draining(capsys):
    fluid(capsys, "host", "add", "hv-1", "--max-sandboxes", "4", "--label", "zone=a")
    fluid(capsys, "host", "drain", "hv-1")

    fluid(capsys, "host", "add", "hv-1", "--max-sandboxes", "6")

    host = listed(capsys)["hv-1"]
    assert (host["state"], host["max_sandboxes"], host["labels"]) == ("draining", 6, {"zone": "a"})


@pytest.mark.parametrize("bad", ["Upper", "a_b", "x" * 64, "a/b", "ünï"])
def test_a_bad_host_id_is_refused_and_nothing_is_registered(capsys, bad):
    code, out, err = fluid(capsys, "host", "add", bad)
    assert code == 1 and out == ""
    assert "is not a host id" in err
    assert listed(capsys) == {}


@pytest.mark.parametrize("cmd", ["drain", "ready"])
def test_an_unknown_host_is_an_error_that_says_how_to_list_them(capsys, cmd):
    code, out, err = fluid(capsys, "host", cmd, "nope")
    assert code == 1 and out == ""
    assert "no host 'nope' is registered" in err and "fluid host list" in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--label", "zone", "KEY=VALUE"),
        ("--label", "=a", "KEY=VALUE"),
        ("--max-sandboxes", "0", "at least 1"),
    ],
)
def test_a_bad_option_is_refused_and_nothing_is_registered(capsys, option, value, message):
    code, _, err = fluid(capsys, "host", "add", "hv-1", option, value)
    assert code == 1 and message in err
    assert listed(capsys) == {}
