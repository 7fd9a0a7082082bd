"""Who made a change is decided by evidence, never by timing: a package is credited only with
what its payload, its maintainer scripts or the files journal's record of the writing process
account for; everything else is the agent's and exported. Files fluid itself writes to
(/etc/hosts) are compared line by line without fluid's lines and exported line by line; a mode
change or a re-pointed link on a path another kind reads is reported once and exported.

One sandbox of the module's own, whose agent works right after an apt run, plus the replay's.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.ansible.playbook_runs import run_playbook, sandbox_host
from infra.ansible.verification import verify
from infra.machines import sandboxes
from infra.settings import FluidSettings
from infra.state import playbook_yaml
from infra.state.base import ChangeSet
from infra.state.export import ROLE, export
from tests.ansible_lint import lint_playbook
from tests.conftest import changed_sandbox

pytestmark = pytest.mark.vm

SANDBOX = f"attrib-{secrets.token_hex(3)}"  # test sessions on one host share its disks
# uuid-runtime's postinst runs `addgroup --system uuidd` and `adduser --system ... uuidd`.
PACKAGE, PACKAGE_ACCOUNT = "uuid-runtime", "uuidd"
WANTS = "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
ADDED_LINE = "10.1.2.3 db.internal"
REMOVED_LINE = "::1 localhost ip6-localhost ip6-loopback"
# Each step a command of its own, as an agent runs them, seconds apart.
STEPS = (
    # The agent's file lands in the very second dpkg finished.
    "set -e; apt-get update -q >/dev/null\n"
    f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {PACKAGE} >/dev/null\n"
    "echo 'written by the agent' > /srv/agent-note",
    "useradd -r svcacct",
    "groupadd -r svcgrp",
    f"echo '{ADDED_LINE}' >> /etc/hosts && sed -i '/^::1 /d' /etc/hosts",
    "chmod 600 /etc/crontab",
    # An enablement link (the services kind's) pointed at the same unit by another path.
    f"ln -sfn /usr/lib/systemd/system/systemd-networkd.service {WANTS}",
)


def _run(command: str, settings: FluidSettings) -> str:
    r = sandboxes.run(SANDBOX, command, timeout=900, output_cap=1 << 20, settings=settings)
    assert r.exit_status == 0, r.stderr_text
    return r.stdout_text


@pytest.fixture(scope="module")
def changed(golden_image, settings) -> Iterator[ChangeSet]:
    """The module's sandbox checkpointed before and after the agent's steps; its ChangeSet."""
    # The sandbox names itself in /etc/hosts by its id (as cloud-init does), so its own line
    # differs from the replay's `127.0.1.1 sandbox`: neither may show as a change.
    own_name = f"sed -i 's/^127.0.1.1 .*/127.0.1.1 {SANDBOX}/' /etc/hosts"
    with changed_sandbox(SANDBOX, STEPS, settings, prepare=own_name) as changes:
        yield changes


@pytest.fixture(scope="module")
def playbook(changed, settings, tmp_path_factory) -> Path:
    out = export(changed, tmp_path_factory.mktemp("export") / "playbook", settings)
    lint_playbook(out)
    return out


def _tasks(playbook: Path) -> list[dict]:
    return playbook_yaml.load((playbook / "roles" / ROLE / "tasks" / "main.yml").read_text())


@pytest.mark.timeout(1800)  # the module's sandbox is made here: apt, two captures
def test_only_the_account_the_packages_scripts_make_is_credited_to_it(changed):
    users = {c.key: c for c in changed.of("users")}
    assert {k for k, c in users.items() if c.exported} == {
        "group svcacct",
        "user svcacct",
        "group svcgrp",
    }
    package_made = {k: c for k, c in users.items() if not c.exported}
    assert set(package_made) == {f"group {PACKAGE_ACCOUNT}", f"user {PACKAGE_ACCOUNT}"}
    for c in package_made.values():
        assert c.implied and PACKAGE in (c.note or ""), c


def test_a_file_the_agent_wrote_as_dpkg_finished_is_the_agents_and_the_packages_are_not(changed):
    files = {c.key: c for c in changed.of("files")}
    assert set(files) == {"/srv/agent-note", "/etc/crontab", WANTS}
    assert all(c.exported for c in files.values())
    assert files["/srv/agent-note"].action == "added"
    # dpkg unpacked /usr/sbin/uuidd, its postinst made /etc/rc2.d/S01uuidd: the package's.
    assert [(c.key, c.action) for c in changed.of("packages")] == [(PACKAGE, "added")]


def test_an_edit_of_etc_hosts_is_a_change_of_lines_without_fluids_own(changed):
    hosts = changed.of("hosts")
    assert [(c.key, c.action, c.exported) for c in hosts] == [("/etc/hosts", "modified", True)]
    assert hosts[0].after == {"added": [ADDED_LINE], "removed": [REMOVED_LINE]}
    assert f"+{ADDED_LINE}" in hosts[0].text_diff and f"-{REMOVED_LINE}" in hosts[0].text_diff
    assert not any("/etc/hosts" in c.key for c in changed.changes if c.kind != "hosts")


def test_a_mode_change_on_a_file_another_kind_reads_is_reported_once(changed):
    crontab = [c for c in changed.changes if "/etc/crontab" in c.key]
    assert [(c.kind, c.key, c.action) for c in crontab] == [("files", "/etc/crontab", "modified")]
    assert crontab[0].details[0] == "mode 0644 → 0600"
    assert crontab[0].after["mode"] == 0o600 and "sha256" not in crontab[0].after
    link = next(c for c in changed.of("files") if c.key == WANTS)
    assert link.after["target"] == "/usr/lib/systemd/system/systemd-networkd.service"
    assert "systemd-networkd.service" not in {c.key for c in changed.of("services")}


def test_the_export_edits_hosts_line_by_line_and_sets_the_mode(playbook):
    tasks = _tasks(playbook)
    lines = [t["ansible.builtin.lineinfile"] for t in tasks if "ansible.builtin.lineinfile" in t]
    assert lines == [
        {"path": "/etc/hosts", "line": REMOVED_LINE, "state": "absent"},
        {"path": "/etc/hosts", "line": ADDED_LINE, "state": "present"},
    ]
    assert all(isinstance(t["line"], playbook_yaml.Unsafe) for t in lines)
    assert not [t for t in tasks if t.get("ansible.builtin.copy", {}).get("dest") == "/etc/hosts"]
    files = {
        t["ansible.builtin.file"]["path"]: t["ansible.builtin.file"]
        for t in tasks
        if "ansible.builtin.file" in t
    }
    assert files["/etc/crontab"]["mode"] == "0600"
    assert files[WANTS]["state"] == "link"
    assert any(t.get("ansible.builtin.copy", {}).get("dest") == "/srv/agent-note" for t in tasks)
    users = [t["ansible.builtin.user"] for t in tasks if "ansible.builtin.user" in t]
    assert [u["name"] for u in users] == ["svcacct"]
    assert users[0]["create_home"] is False  # `useradd -r` made no home; nor does the export


@pytest.mark.timeout(900)
def test_the_hosts_lines_apply_to_a_host_with_its_own_name_line(changed, settings, tmp_path):
    """Applied to a host whose /etc/hosts names that host, the playbook adds and removes the
    agent's lines and keeps the host's own. (Edits the module's sandbox: it plays the host.)"""
    hosts_only = changed.model_copy(update={"changes": changed.of("hosts")})
    pb = export(hosts_only, tmp_path / "hosts-playbook", settings)
    lint_playbook(pb)
    own = f"127.0.0.1 localhost\n127.0.1.1 prod-web-1\n{REMOVED_LINE}\n"
    _run(f"printf '%s' '{own}' > /etc/hosts", settings)
    run = run_playbook(pb, [sandbox_host(SANDBOX, tmp_path, settings)], settings=settings)
    assert run.succeeded, run.output_tail
    assert _run("cat /etc/hosts", settings) == (
        f"127.0.0.1 localhost\n127.0.1.1 prod-web-1\n{ADDED_LINE}\n"
    )


@pytest.mark.timeout(2400)  # a replay: create, two captures, two playbook runs on TCG
def test_the_playbook_replays_with_no_residual_and_a_second_run_changes_nothing(playbook, settings):
    report = verify(playbook, settings=settings)
    assert report.error is None, report.error
    assert report.residual == []
    assert report.idempotence is not None and report.idempotence.changed_total == 0
    assert report.passed
