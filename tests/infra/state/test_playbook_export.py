"""The exported playbook, without VMs: a ChangeSet of every resource kind, written by hand.

Its contents are put into a blob store in a temporary FLUID_HOME, as a capture would. The
export is linted (ansible-lint, production profile), checked by ansible-playbook, and its
files/ read back: each copied file under its target path, or by its hash when the guest's path
cannot safely be a file name, never outside files/ and never one over another.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.settings import FluidSettings
from infra.state import playbook_files
from infra.state.base import Change, ChangeSet, kinds
from infra.state.capture import blob_store
from infra.state.export import ROLE, export, verify_digest
from infra.state.playbook_yaml import JINJA_OPENER, Unsafe, load
from tests.ansible_lint import lint_playbook
from tests.conftest import assert_ansible_syntax

BIG = 3 << 20  # over the size a diff shows as text
T = "{{ lookup('pipe', 'touch /tmp/fluid-never') }}"
# Guest paths files/ must not take as names, each with the words the task's note uses.
HOSTILE = {
    f"/srv/app/{T}.conf": "characters other than",
    "/srv/app/{% raw %} x {# c #}": "characters other than",
    "/srv/app/../../../../etc/passwd": "'..' component",
    "/srv/app/line\nbreak": "characters other than",
    "/srv/app/bell\x07 and 'quotes\"": "characters other than",
    "/srv/app//double": "empty",
    "/srv/" + "long/" * 220 + "end": "longer than",
    "/sha256/" + "0" * 64: "where files/ keeps contents",
    "/etc/App.conf": "collides",  # after /etc/APP.conf once case is folded
    "/opt/tool/bin": "collides",  # /opt/tool is a file
}
LEFT_OUT = "/srv/" + "not-utf8-" * 30 + "\udcff"
SAFE = {
    "/etc/nginx/nginx.conf": b"worker_processes 2;\n",
    "/etc/APP.conf": b"upper\n",
    "/opt/tool": b"a file, not a directory\n",
    "/home/deploy/.bashrc": b"alias ll='ls -l'\n",
}


def _file(path: str, sha: str | None = None, kind: str = "file", **after) -> Change:
    state = {"type": kind, "mode": 0o640, "owner": "root", "group": "root", "sha256": sha}
    return Change(kind="files", key=path, action="added", after=state | {"target": None} | after)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fluid-home")


@pytest.fixture(scope="module")
def settings(home: Path) -> FluidSettings:
    return FluidSettings(home=home)


@pytest.fixture(scope="module")
def contents(settings) -> dict[str, bytes]:
    """Each path's content, stored as a capture stores it."""
    blobs = blob_store(settings)
    out = {p: data for p, data in SAFE.items()}
    out |= {p: f"hostile {i} {T}\n".encode() for i, p in enumerate(HOSTILE)}
    out["/opt/big.bin"] = os.urandom(BIG)
    for data in [*out.values(), b"ssh-ed25519 AAAA key\n", b"vm.swappiness = 10\n"]:
        blobs.put(data)
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def every_kind(contents) -> ChangeSet:
    keys = b"ssh-ed25519 AAAA key\n"
    return ChangeSet(
        sandbox_id="lint-1",
        changes=[
            Change(kind="packages", key="nginx", action="added", after={"version": "1.22"}),
            Change(kind="packages", key="curl", action="modified", after={"version": "8.1"}),
            Change(kind="packages", key="nano", action="removed", before={"version": "7.2"}),
            Change(kind="users", key="group web", action="added", after={"gid": 1500}),
            Change(kind="users", key="group old", action="removed", before={"gid": 1400}),
            Change(
                kind="users",
                key="user deploy",
                action="added",
                after={
                    "uid": 1500,
                    "group": "web",
                    "groups": ["sudo"],
                    "home": "/home/deploy",
                    "shell": "/bin/bash",
                    "comment": T,
                    "password": "locked",
                },
            ),
            Change(
                kind="users",
                key="/home/deploy/.ssh/authorized_keys",
                action="added",
                after={"owner": "deploy", "group": "web", "mode": 0o600, "sha256": _sha(keys)},
            ),
            _file("/srv/app", kind="directory", mode=0o755),
            *(_file(p, _sha(data)) for p, data in contents.items()),
            _file(f"/srv/app/link {T}", kind="symlink", target=T),
            # Not UTF-8, so left out, and named in site.yml's header: a long comment line.
            _file(LEFT_OUT, kind="directory", mode=0o755),
            Change(
                kind="files",
                key="/etc/motd",
                action="modified",
                before={
                    "type": "file",
                    "mode": 0o644,
                    "owner": "root",
                    "group": "root",
                    "sha256": "1" * 64,
                    "target": None,
                },
                after={
                    "type": "file",
                    "mode": 0o600,
                    "owner": "root",
                    "group": "root",
                    "sha256": "1" * 64,
                    "target": None,
                },
            ),
            Change(
                kind="files",
                key="/etc/crontab",
                action="modified",
                before={
                    "type": "file",
                    "mode": 0o644,
                    "owner": "root",
                    "group": "root",
                    "target": None,
                },
                after={
                    "type": "file",
                    "mode": 0o600,
                    "owner": "root",
                    "group": "root",
                    "target": None,
                },
                details=["mode 0644 → 0600", "metadata only: its content is another kind's"],
            ),
            Change(
                kind="files",
                key="/srv/gone",
                action="removed",
                before={
                    "type": "file",
                    "mode": 0o644,
                    "owner": "root",
                    "group": "root",
                    "sha256": "2" * 64,
                    "target": None,
                },
            ),
            Change(
                kind="cron",
                key=f"/etc/cron.d/app: 17 3 * * * echo '{T}'",
                action="added",
                after={
                    "file": "/etc/cron.d/app",
                    "user": "root",
                    "schedule": "17 3 * * *",
                    "job": f"echo '{T}'",
                },
            ),
            Change(
                kind="cron",
                key="/var/spool/cron/crontabs/deploy: @daily true",
                action="removed",
                before={
                    "file": "/var/spool/cron/crontabs/deploy",
                    "user": "deploy",
                    "schedule": "@daily",
                    "job": "true",
                },
            ),
            Change(
                kind="sysctl",
                key="/etc/sysctl.d/60-app.conf",
                action="added",
                after={
                    "mode": 0o644,
                    "owner": "root",
                    "group": "root",
                    "sha256": _sha(b"vm.swappiness = 10\n"),
                    "settings": {"vm.swappiness": "10"},
                },
            ),
            Change(
                kind="hosts",
                key="/etc/hosts",
                action="modified",
                after={"added": ["10.0.0.5 db"], "removed": [f"10.0.0.6 {T}"]},
            ),
            Change(
                kind="hosts",
                key="/etc/hostname",
                action="modified",
                before={"hostname": None},
                after={"hostname": "web1"},
            ),
            Change(
                kind="services",
                key="app.service",
                action="added",
                after={"enablement": "enabled", "active": "active"},
            ),
            Change(
                kind="services",
                key="old.timer",
                action="modified",
                before={"enablement": "enabled", "active": "active"},
                after={"enablement": "masked", "active": "inactive"},
            ),
        ],
    )


@pytest.fixture(scope="module")
def playbook(every_kind, settings, tmp_path_factory) -> Path:
    return export(every_kind, tmp_path_factory.mktemp("export") / "playbook", settings)


def _tasks(playbook: Path) -> list[dict]:
    return load((playbook / "roles" / ROLE / "tasks" / "main.yml").read_text())


def _copies(playbook: Path) -> dict[str, str]:
    """dest → src of every copy task that copies a file from files/."""
    return {
        t["ansible.builtin.copy"]["dest"]: t["ansible.builtin.copy"]["src"]
        for t in _tasks(playbook)
        if "src" in t.get("ansible.builtin.copy", {})
    }


def test_the_change_covers_every_resource_kind(every_kind):
    assert {c.kind for c in every_kind.changes} == set(kinds())


def test_ansible_lint_production_profile_passes_on_it(playbook, tmp_path):
    assert "left out files '/srv/not-utf8-" in (playbook / "site.yml").read_text()
    lint_playbook(playbook)
    assert_ansible_syntax(playbook, tmp_path)
    assert verify_digest(playbook)


def test_a_file_is_stored_under_its_target_path(playbook, contents):
    copies = _copies(playbook)
    files = playbook / "roles" / ROLE / "files"
    for path, data in {**SAFE, "/opt/big.bin": contents["/opt/big.bin"]}.items():
        if path in HOSTILE:
            continue
        assert copies[path] == path.removeprefix("/"), path
        assert (files / copies[path]).read_bytes() == data
    assert copies["/home/deploy/.ssh/authorized_keys"] == "home/deploy/.ssh/authorized_keys"
    assert copies["/etc/sysctl.d/60-app.conf"] == "etc/sysctl.d/60-app.conf"


def test_a_path_that_cannot_be_a_safe_name_is_stored_by_its_hash_and_the_task_says_why(
    playbook, contents
):
    copies = _copies(playbook)
    text = (playbook / "roles" / ROLE / "tasks" / "main.yml").read_text()
    for path, why in HOSTILE.items():
        sha = _sha(contents[path])
        assert copies[path] == f"sha256/{sha}", repr(path)
        lines = text.splitlines()
        at = lines.index(f"# files/sha256/{sha}: stored by its sha256, not under its path,")
        assert lines[at + 1].startswith("# ") and why in lines[at + 1], lines[at + 1]
    # The notes are fluid's words: no guest path reaches a comment.
    assert "lookup" not in "".join(line for line in text.splitlines() if line.startswith("#"))


def test_files_holds_each_content_once_inside_it_and_nothing_else(playbook, contents):
    files = (playbook / "roles" / ROLE / "files").resolve()
    written = {p for p in files.rglob("*") if p.is_file() or p.is_symlink()}
    copies = _copies(playbook)
    assert written == {files / src for src in copies.values()}
    for dest, src in copies.items():
        stored = files / src
        assert stored.resolve().is_relative_to(files) and not stored.is_symlink()
        if dest in contents:
            assert stored.read_bytes() == contents[dest], repr(dest)


def test_every_guest_string_in_the_arguments_is_unsafe_and_no_name_is_a_template(playbook):
    tasks = _tasks(playbook)
    handlers = load((playbook / "roles" / ROLE / "handlers" / "main.yml").read_text())
    for task in [*tasks, *handlers]:
        assert not JINJA_OPENER.search(task["name"]), task["name"]
        assert task["name"][:1].isupper(), task["name"]
        args = next(v for k, v in task.items() if k.startswith("ansible.builtin."))
        for value in args.values() if isinstance(args, dict) else []:
            if isinstance(value, str) and "lookup" in value:
                assert isinstance(value, Unsafe), (task["name"], value)
    link = next(t for t in tasks if "link" in t.get("ansible.builtin.file", {}).get("state", ""))
    assert link["ansible.builtin.file"]["src"] == T


def test_the_play_runs_on_fluid_hosts_and_on_all_hosts_by_default(playbook, tmp_path):
    inventory = tmp_path / "inventory.ini"
    inventory.write_text("[web]\nweb1\nweb2\n[db]\ndb1\n")
    playbook_cmd = str(Path(sys.executable).with_name("ansible-playbook"))

    def listed(*extra: str) -> set[str]:
        r = subprocess.run(
            [
                playbook_cmd,
                "--list-hosts",
                "-i",
                str(inventory),
                *extra,
                str(playbook / "site.yml"),
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        return {line.strip() for line in r.stdout.splitlines() if line.startswith("      ")}

    assert listed() == {"web1", "web2", "db1"}
    assert listed("-e", "fluid_hosts=web") == {"web1", "web2"}


def test_a_layout_never_gives_two_contents_one_name_nor_one_inside_another():
    made = [
        playbook_files.content(p, f"{i:064x}")
        for i, p in enumerate(["/a/b", "/A/B", "/a/b/c", "/a", "/a/b", "/x/y"])
    ]
    stored = playbook_files.layout(made)
    names = [s.name.casefold() for s in stored.values()]
    assert len(set(names)) == len(names)
    for n in names:
        assert not any(other.startswith(n + "/") for other in names), n
    assert stored[made[-1]].name == "x/y" and stored[made[-1]].fallback is None


def test_the_digest_binds_every_file_under_its_path(playbook, tmp_path):
    files = Path(ROLE) / "files"
    for change in ("edit", "move"):
        copy = tmp_path / change
        shutil.copytree(playbook, copy)
        conf = copy / "roles" / files / "etc/nginx/nginx.conf"
        assert verify_digest(copy)
        if change == "edit":
            conf.write_bytes(b"worker_processes 64;\n")
        else:  # the same bytes, copied to another target path
            conf.rename(conf.with_name("mime.types"))
        assert not verify_digest(copy), change
