"""A hostile guest's strings stay data in the playbook fluid exports, on real VMs.

One sandbox writes template syntax into every field the export carries (paths, a symlink's
target, file contents, a user's comment, home and shell, a cron file and job, a sysctl file
and value) and makes a uid-0 account and a sudo member. Its change is exported, checked by
ansible-playbook, proven by replay on a fresh sandbox and previewed in check mode; a file on
the host that the guest's template would create never appears.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from infra.ansible.playbook_runs import run_playbook, sandbox_host
from infra.ansible.verification import verify
from infra.machines import sandboxes
from infra.state import capture
from infra.state.base import ChangeSet
from infra.state.diff import compare
from infra.state.export import ROLE, export, load_changeset, verify_digest
from infra.state.playbook_yaml import JINJA_OPENER, Unsafe, load
from tests.ansible_lint import lint_playbook
from tests.conftest import assert_ansible_syntax, changed_sandbox

SANDBOX = f"hostile-{secrets.token_hex(3)}"  # test sessions on one host share its disks
# The host file the guest's templates would create if Ansible ever evaluated them.
PROOF = Path(f"/tmp/fluid-proof-{secrets.token_hex(6)}")
RUN_ON_HOST = f"{{{{ lookup('pipe','touch {PROOF}') }}}}"
T = "{{ 7*7 }}"
RAW = "{% raw %}"
NOTE = "{# note #}"
DIR = f"/srv/hostile/{RAW} dir {T}"
FILE = f"/srv/hostile/{T} file {NOTE}.txt"
INNER = f"{DIR}/{RAW} inner {T}"
LINK = f"/srv/hostile/{T} link {RAW}"
CONTENT = f"listen {T};\n{RAW}{{% if x %}}\n{NOTE}\n{RUN_ON_HOST}\n"
HOME = f"/home/{T}"
SHELL = f"/bin/{T}"
CRON_FILE = f"/etc/cron.d/fluid {T}"
CRON_JOB = f"echo '{RUN_ON_HOST}' > /dev/null"
SYSCTL = f"/etc/sysctl.d/70-{T}.conf"
SYSCTL_TEXT = f"# {RUN_ON_HOST}\nkernel.domainname = {T}\n"
STEPS = "\n".join(
    [
        "set -e",
        "mkdir -p /srv/hostile",
        f"mkdir {shlex.quote(DIR)}",
        f"printf '%s' {shlex.quote(CONTENT)} > {shlex.quote(FILE)}",
        f"printf 'inner\\n' > {shlex.quote(INNER)}",
        f"ln -s {shlex.quote(RUN_ON_HOST)} {shlex.quote(LINK)}",
        "groupadd -g 1600 hostile",
        f"useradd -m -d {shlex.quote(HOME)} -s {shlex.quote(SHELL)} "
        f"-c {shlex.quote(RUN_ON_HOST)} -G hostile,sudo tmpl",
        "useradd -o -u 0 -g 0 -M -d /root -s /bin/sh toor",
        f"printf '17 3 * * * root %s\\n' {shlex.quote(CRON_JOB)} > {shlex.quote(CRON_FILE)}",
        f"printf '%s' {shlex.quote(SYSCTL_TEXT)} > {shlex.quote(SYSCTL)}",
    ]
)


@pytest.fixture(scope="module")
def hostile(golden_image, settings) -> Iterator[ChangeSet]:
    """A sandbox checkpointed before and after its hostile change; the ChangeSet."""
    with changed_sandbox(SANDBOX, STEPS, settings, timeout=600) as changes:
        yield changes


@pytest.fixture(scope="module")
def playbook(hostile, settings, tmp_path_factory) -> Path:
    out = export(hostile, tmp_path_factory.mktemp("hostile") / "playbook", settings)
    assert not PROOF.exists()
    lint_playbook(out)
    assert not PROOF.exists()
    return out


GUEST_FIELDS = (
    "path",
    "dest",
    "src",
    "owner",
    "group",
    "name",
    "home",
    "shell",
    "comment",
    "user",
    "job",
    "cron_file",
    "minute",
    "regexp",
)


def _tasks(playbook: Path) -> list[dict]:
    return load((playbook / "roles" / ROLE / "tasks" / "main.yml").read_text())


def _module_args(task: dict) -> dict:
    return next(v for k, v in task.items() if k.startswith("ansible.builtin."))


@pytest.mark.timeout(1800)  # the module's sandbox is made here: boot and two captures
def test_a_uid_0_account_and_a_sudo_member_are_flagged_with_their_identity(hostile):
    by_key = {c.key: c for c in hostile.changes}
    toor = by_key["user toor"].details
    assert toor[0] == "WARNING: uid 0 (root-equivalent)"
    assert "WARNING: primary group has gid 0 (root's group)" in toor
    assert {"uid 0", "gid 0 (root)", "shell /bin/sh", "home /root"} <= set(toor)
    tmpl = by_key["user tmpl"].details
    assert tmpl[0] == "WARNING: member of sudo (privileged groups)"
    assert f"shell {SHELL}" in tmpl and f"home {HOME}" in tmpl
    assert "groups hostile, sudo" in tmpl
    assert any(line.startswith("uid 10") for line in tmpl)
    assert any(line.startswith("gid ") and line.endswith("(tmpl)") for line in tmpl)
    assert by_key["group hostile"].details == ["gid 1600"]


def test_guest_strings_are_emitted_unsafe_and_fluids_own_values_plain(hostile, playbook, tmp_path):
    keys = {(c.kind, c.key) for c in hostile.changes if c.exported}
    assert {
        ("files", "/srv/hostile"),
        ("files", DIR),
        ("files", FILE),
        ("files", INNER),
        ("files", LINK),
        ("users", "group hostile"),
        ("users", "user tmpl"),
        ("users", "user toor"),
        ("cron", f"{CRON_FILE}: 17 3 * * * {CRON_JOB}"),
        ("sysctl", SYSCTL),
    } <= keys
    tasks = _tasks(playbook)
    for task in tasks:
        args = _module_args(task)
        for field in GUEST_FIELDS:
            value = args.get(field)
            if field == "src" and "ansible.builtin.copy" in task:
                # A files/ name is fluid's own: a safe target path or sha256/<hash>.
                assert type(value) is str and not JINJA_OPENER.search(value), value
            elif value is not None:
                # Quoted plain only where `!unsafe` would make it a number or boolean ('' too).
                assert isinstance(value, Unsafe) or "{" not in value, (task["name"], field)
        # Names are plain, with every Jinja opener split: the exact string is in the args.
        assert type(task["name"]) is str and not JINJA_OPENER.search(task["name"])
        if "mode" in args:
            assert type(args["mode"]) is str and args["mode"].isdigit()
        if "state" in args:
            assert type(args["state"]) is str
    link = next(t for t in tasks if _module_args(t).get("path") == LINK)
    assert link["ansible.builtin.file"]["src"] == RUN_ON_HOST
    args = next(
        t["ansible.builtin.user"]
        for t in tasks
        if t.get("ansible.builtin.user", {}).get("name") == "tmpl"
    )
    assert (args["home"], args["shell"], args["comment"]) == (HOME, SHELL, RUN_ON_HOST)
    assert all(isinstance(g, Unsafe) for g in args["groups"])
    copy = next(t for t in tasks if _module_args(t).get("dest") == FILE)
    src = copy["ansible.builtin.copy"]["src"]
    assert src == f"sha256/{hashlib.sha256(CONTENT.encode()).hexdigest()}"  # not a safe name
    assert (playbook / "roles" / ROLE / "files" / src).read_text() == CONTENT
    assert verify_digest(playbook)
    assert_ansible_syntax(playbook, tmp_path)
    assert not PROOF.exists()


@pytest.mark.timeout(2400)  # a fresh sandbox, two captures and two playbook runs on TCG
def test_the_replay_reproduces_every_name_and_content_byte_for_byte(playbook, settings):
    report = verify(playbook, settings=settings)
    assert not PROOF.exists(), "a guest's template ran on the host"
    assert report.error is None, report.error
    # The replay's own capture found each path, target, owner, account field, cron line and
    # content hash exactly as in the sandbox (a name templated to "49" would be a residual).
    assert report.residual == [], [(c.kind, c.key, c.note) for c in report.residual]
    assert report.converge and report.converge.changed_total > 0
    assert report.idempotence and report.idempotence.changed_total == 0
    assert report.passed


def test_a_check_mode_preview_against_the_changed_sandbox_runs_no_guest_template(
    playbook, hostile, settings, tmp_path
):
    hosts = [sandbox_host(SANDBOX, tmp_path, settings)]
    run = run_playbook(playbook, hosts, check=True, diff=True, settings=settings)
    assert run.succeeded, run.output_tail[-3000:]
    assert not PROOF.exists()
    # Each file, link, account and sysctl task finds its literally named object as the
    # playbook wants it; only the cron task would change (it marks a line it did not write).
    tasks = run.output_tail.split("TASK [")[1:]
    assert len(tasks) == len(_tasks(playbook))
    changed = [t.splitlines()[0] for t in tasks if "\nchanged: [" in t]
    assert len(changed) == 1 and changed[0].startswith("fluid_change : Cron "), changed


def test_ansible_runs_without_the_flows_credentials(hostile, settings, tmp_path, monkeypatch):
    secret = secrets.token_hex(16)
    for name in ("PREFECT_API_AUTH_STRING", "FLUID_TEST_SECRET", "OPENAI_API_KEY"):
        monkeypatch.setenv(name, f"{name}-{secret}")
    probe = tmp_path / "probe"
    probe.mkdir()
    names = "env | cut -d= -f1 | sort | paste -s -d ' ' -"
    (probe / "site.yml").write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "all",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "ansible.builtin.debug": {
                                "msg": "seen=[{{ lookup('env', 'PREFECT_API_AUTH_STRING') }}"
                                "{{ lookup('env', 'FLUID_TEST_SECRET') }}"
                                "{{ lookup('env', 'OPENAI_API_KEY') }}]"
                            }
                        },
                        {
                            "ansible.builtin.debug": {
                                "msg": f"names=[{{{{ lookup('pipe', {names!r}) }}}}]"
                            }
                        },
                    ],
                }
            ]
        )
    )
    run = run_playbook(probe, [sandbox_host(SANDBOX, tmp_path, settings)], settings=settings)
    assert run.succeeded, run.output_tail[-3000:]
    assert "seen=[]" in run.output_tail
    assert secret not in run.output_tail
    listed = run.output_tail.split("names=[", 1)[1].split("]", 1)[0].split()
    assert "PATH" in listed and "HOME" in listed
    assert not [n for n in listed if n.startswith(("PREFECT_", "FLUID_", "OPENAI_"))], listed
    assert os.environ["FLUID_TEST_SECRET"].endswith(secret), "the flow's own env is untouched"


def test_a_name_that_is_not_utf8_is_left_out_and_said_so(hostile, settings, tmp_path):
    r = sandboxes.run(
        SANDBOX, "printf x > \"/srv/hostile/latin-$(printf '\\377')\"", settings=settings
    )
    assert r.exit_status == 0, r.stderr_text
    # Not a checkpoint: capture.save cannot store such a name yet (pydantic refuses to write
    # a lone surrogate as JSON); the capture in memory has it.
    cs = compare(
        capture.load(SANDBOX, "after", settings), capture.capture(SANDBOX, settings=settings)
    )
    (change,) = [c for c in cs.changes if c.key.startswith("/srv/hostile/")]
    assert change.key == "/srv/hostile/latin-\udcff"
    assert not change.exported and "not valid UTF-8" in (change.note or "")
    out = export(cs, tmp_path / "pb", settings)
    lint_playbook(out)
    assert "latin-" not in (out / "roles" / ROLE / "tasks" / "main.yml").read_text()
    assert "left out files '/srv/hostile/latin-\\udcff'" in (out / "site.yml").read_text()
    assert load_changeset(out).changes[0].key == change.key
    assert verify_digest(out)
