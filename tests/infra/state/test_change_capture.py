"""See exactly what changed: capture, diff, Ansible export and proof by replay, on real VMs.

One sandbox receives every kind of change at once and one replay proves the playbook, to keep
CI short; each test checks one promise about that change.

STEPS is also the catalogue of ordinary sysadmin changes that must each be listed exactly,
replayed with an empty residual and changed=0 the second time: a package installed and one
removed, a user with keys and sudo, a supplementary group, a directory tree with modes (setgid
too) and owners, an empty file and an empty directory, a user crontab and a /etc/cron.d entry,
a service enabled and a timer the image enables disabled, an environment file edit, a
non-ASCII file name, a binary and a templated-looking file. The rest of the catalogue lives
where its sandbox already is: a system account and group made by hand, an /etc/hosts edit and
a mode change on a file another kind reads in test_change_attribution; a binary over 100 MB in
test_large_files; a change no playbook can carry in test_change_proof.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from infra.machines import sandboxes, warm_slots
from infra.state import capture, noise, playbook_yaml
from infra.state.base import ChangeSet, kinds, unwatched
from infra.state.diff import compare, markdown, terminal
from infra.state.export import export, verify_digest
from infra.state.kinds import files
from tests.ansible_lint import lint_playbook
from tests.conftest import assert_ansible_syntax, changed_sandbox, fluid, fluid_json

SANDBOX = "change"
TEMPLATED = "listen {{ port }};\n{% if tls %}ssl on;{% endif %}\n{# not a comment #}\n"
STEPS = f"""
set -e
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >/dev/null
mkdir -p /var/www/hello
echo 'Hello from fluid' > /var/www/hello/index.html
printf 'server {{\\n  listen 8080;\\n  root /var/www/hello;\\n}}\\n' \\
  > /etc/nginx/sites-available/hello
ln -s /etc/nginx/sites-available/hello /etc/nginx/sites-enabled/hello
systemctl enable nginx
systemctl reload nginx
useradd -m -s /bin/bash deploy
echo 'deploy ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/deploy
chmod 0440 /etc/sudoers.d/deploy
install -d -m 0700 -o deploy -g deploy /home/deploy/.ssh
echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops' \\
  > /home/deploy/.ssh/authorized_keys
chown deploy:deploy /home/deploy/.ssh/authorized_keys
chmod 0600 /home/deploy/.ssh/authorized_keys
echo 'vm.swappiness = 10' > /etc/sysctl.d/60-fluid.conf
echo '17 3 * * * root /usr/bin/true backup' > /etc/cron.d/fluid-backup
chmod 0600 /etc/cron.d/fluid-backup
DEBIAN_FRONTEND=noninteractive apt-get remove -y -q less >/dev/null
rm /etc/motd
chmod 0600 /etc/issue.net
chown nobody:nogroup /etc/issue.net
cat > /etc/fluid-app.conf <<'EOF_T'
{TEMPLATED}EOF_T
head -c 3000 /dev/urandom > /opt/blob.bin
printf '\\000\\001\\002' >> /opt/blob.bin
ln -s /opt/blob.bin /opt/current
echo 'spaced out' > '/etc/with space.conf'
usermod -aG users www-data
install -d -m 0750 -o deploy -g www-data /srv/app /srv/app/releases
install -d -m 2770 -o deploy -g deploy /srv/app/shared
touch /srv/app/shared/.keep
mkdir /srv/app/empty.d
echo '5 4 * * * /usr/bin/true nightly' | crontab -u deploy -
systemctl disable dpkg-db-backup.timer
echo 'APP_ENV=production' >> /etc/environment
mkdir '/opt/café' && echo bonjour > '/opt/café/naïve.txt'
"""

EXPECTED = {
    "packages": {("nginx", "added"), ("less", "removed")},
    "users": {
        ("group deploy", "added"),
        ("user deploy", "added"),
        ("/etc/sudoers.d/deploy", "added"),
        ("/home/deploy/.ssh/authorized_keys", "added"),
        ("user www-data", "modified"),  # a supplementary group
    },
    "files": {
        ("/var/www/hello", "added"),
        ("/var/www/hello/index.html", "added"),
        ("/etc/nginx/sites-available/hello", "added"),
        ("/etc/nginx/sites-enabled/hello", "added"),
        ("/home/deploy/.ssh", "added"),
        ("/etc/motd", "removed"),
        ("/etc/issue.net", "modified"),
        ("/etc/fluid-app.conf", "added"),
        ("/opt/blob.bin", "added"),
        ("/opt/current", "added"),
        ("/etc/with space.conf", "added"),
        ("/srv/app", "added"),
        ("/srv/app/releases", "added"),
        ("/srv/app/shared", "added"),
        ("/srv/app/shared/.keep", "added"),  # empty
        ("/srv/app/empty.d", "added"),
        ("/etc/environment", "modified"),
        ("/opt/café", "added"),
        ("/opt/café/naïve.txt", "added"),
        # Made otherwise than the cron module makes them unasked (0644, root's): the files kind
        # reports their mode and owner, set after the cron tasks.
        ("/etc/cron.d/fluid-backup", "added"),
        ("/var/spool/cron/crontabs/deploy", "added"),
        # nginx makes these when it starts (a child of systemd, not of dpkg): no evidence
        # credits them to the package, so they are the agent's, exported like the rest.
        *((f"/var/lib/nginx/{d}", "added") for d in ("body", "fastcgi", "proxy", "scgi", "uwsgi")),
    },
    "cron": {
        ("/etc/cron.d/fluid-backup: 17 3 * * * /usr/bin/true backup", "added"),
        ("/var/spool/cron/crontabs/deploy: 5 4 * * * /usr/bin/true nightly", "added"),
    },
    "sysctl": {("/etc/sysctl.d/60-fluid.conf", "added")},
    "services": {("nginx.service", "added"), ("dpkg-db-backup.timer", "modified")},
}


@pytest.fixture(scope="module")
def changed(golden_image, settings) -> Iterator[ChangeSet]:
    """A sandbox checkpointed before and after every kind of change; its ChangeSet."""
    with changed_sandbox(SANDBOX, STEPS, settings) as changes:
        yield changes


@pytest.fixture(scope="module")
def playbook(changed, settings, tmp_path_factory) -> Path:
    return export(changed, tmp_path_factory.mktemp("export") / "playbook", settings)


@pytest.mark.timeout(1800)  # the module's sandbox is made here: apt, nginx, two captures
def test_the_diff_lists_exactly_the_change(changed):
    for kind, expected in EXPECTED.items():
        exported = {(c.key, c.action) for c in changed.of(kind) if c.exported}
        assert exported == expected, kind
    hidden = [c for c in changed.changes if not c.exported]
    assert all(c.kind == "packages" and c.action == "added" for c in hidden), hidden
    assert {c.key for c in hidden} <= {"nginx-common"}


def test_the_diff_shows_details_text_diffs_and_flags_binaries(changed):
    by_key = {c.key: c for c in changed.changes}
    assert by_key["/etc/issue.net"].details == [
        "mode 0644 → 0600",
        "owner root → nobody",
        "group root → nogroup",
    ]
    assert by_key["/opt/blob.bin"].binary and by_key["/opt/blob.bin"].text_diff is None
    assert "+listen {{ port }};" in by_key["/etc/fluid-app.conf"].text_diff
    assert by_key["/opt/current"].after["target"] == "/opt/blob.bin"
    assert by_key["nginx.service"].after == {"enablement": "enabled", "active": "active"}
    assert by_key["user deploy"].after["shell"] == "/bin/bash"
    assert by_key["user www-data"].after["groups"] == ["users"]
    assert by_key["/srv/app/shared"].after["mode"] == 0o2770
    assert by_key["/srv/app/releases"].after["group"] == "www-data"
    assert by_key["/srv/app/shared/.keep"].after["sha256"] == hashlib.sha256(b"").hexdigest()
    assert by_key["/srv/app/empty.d"].after["type"] == "directory"
    assert "+APP_ENV=production" in by_key["/etc/environment"].text_diff
    assert by_key["dpkg-db-backup.timer"].after["enablement"] == "disabled"
    cron_file = next(c for c in changed.of("files") if c.key == "/etc/cron.d/fluid-backup")
    assert cron_file.details == [
        "mode 0600",
        "owner root",
        "group root",
        "metadata only: its content is another kind's",
    ]
    md = markdown(changed)
    assert "## Packages" in md and "`/etc/with space.conf`" in md and "```diff" in md
    assert "nginx-common` *(not exported)*" in md
    assert "+ /etc/with space.conf" in terminal(changed)
    assert ChangeSet.model_validate_json(changed.model_dump_json()) == changed


def test_an_unchanged_sandbox_captures_an_empty_diff(changed, settings):
    # the "after" checkpoint is the sandbox's current state
    again = capture.capture(SANDBOX, settings=settings) if _alive(settings) else None
    if again is None:
        pytest.fail("the module's sandbox is gone")
    assert compare(capture.load(SANDBOX, "after", settings), again, settings=settings).empty


def _alive(settings) -> bool:
    return sandboxes.get(SANDBOX, settings).state == "running"


def test_the_export_is_a_self_contained_playbook(playbook, tmp_path):
    site = yaml.safe_load((playbook / "site.yml").read_text())
    assert site[0]["hosts"] == "{{ fluid_hosts | default('all') }}" and site[0]["become"] is True
    tasks = playbook_yaml.load((playbook / "roles/fluid_change/tasks/main.yml").read_text())
    modules = {k for t in tasks for k in t if k.startswith("ansible.")}
    assert modules <= {
        "ansible.builtin.apt",
        "ansible.builtin.group",
        "ansible.builtin.user",
        "ansible.builtin.copy",
        "ansible.builtin.file",
        "ansible.builtin.cron",
        "ansible.builtin.systemd_service",
    }
    order = [next(k for k in t if k.startswith("ansible.")) for t in tasks]
    assert (
        order.index("ansible.builtin.apt")
        < order.index("ansible.builtin.group")
        < order.index("ansible.builtin.user")
        < order.index("ansible.builtin.copy")
        < order.index("ansible.builtin.cron")
        < order.index("ansible.builtin.systemd_service")
    )
    apt = next(t["ansible.builtin.apt"] for t in tasks if "ansible.builtin.apt" in t)
    assert apt["update_cache"] is True and apt["cache_valid_time"] > 0
    # a file containing {{ }} and {% %} is copied from files/ (under its path), byte for byte
    copy = next(
        t["ansible.builtin.copy"]
        for t in tasks
        if t.get("ansible.builtin.copy", {}).get("dest") == "/etc/fluid-app.conf"
    )
    assert copy["src"] == "etc/fluid-app.conf"
    assert (playbook / "roles/fluid_change/files" / copy["src"]).read_text() == TEMPLATED
    handlers = playbook_yaml.load((playbook / "roles/fluid_change/handlers/main.yml").read_text())
    assert {
        "name": "Restart nginx",
        "ansible.builtin.systemd_service": {"name": "nginx", "state": "restarted"},
        "ignore_errors": "{{ ansible_check_mode }}",
    } in handlers
    assert "sysctl --system" in (playbook / "site.yml").read_text(), "command flagged"
    # The metadata of paths the cron tasks create is set once they exist: last.
    last = [t["ansible.builtin.file"] for t in tasks[-2:]]
    assert [(f["path"], f["mode"], f["owner"]) for f in last] == [
        ("/etc/cron.d/fluid-backup", "0600", "root"),
        ("/var/spool/cron/crontabs/deploy", "0600", "deploy"),
    ]
    assert json.loads((playbook / "changeset.json").read_text())["sandbox_id"] == SANDBOX
    assert verify_digest(playbook)
    assert_ansible_syntax(playbook, tmp_path)
    lint_playbook(playbook)


def test_a_changed_playbook_no_longer_matches_its_digest(playbook, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(playbook, copy)
    tasks = copy / "roles/fluid_change/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n# sneaky\n")
    assert verify_digest(playbook) and not verify_digest(copy)


@pytest.mark.timeout(2400)  # two playbook runs of ~25 tasks on a TCG guest
def test_the_playbook_replays_with_no_residual_and_a_second_run_changes_nothing(playbook):
    report = fluid_json("verify", str(playbook))
    assert report["error"] is None, report["error"]
    assert report["residual"] == []
    assert report["converge"]["changed"] and sum(report["converge"]["changed"].values()) > 0
    assert sum(report["idempotence"]["changed"].values()) == 0
    assert report["passed"] is True
    assert set(report["timings"]) >= {"create", "converge", "idempotence", "destroy"}


def test_the_cli_diffs_and_exports_between_checkpoints(changed, tmp_path):
    as_json = json.loads(
        fluid("diff", SANDBOX, "--from", "before", "--to", "after", "--json").stdout
    )
    assert ChangeSet.model_validate(as_json) == changed
    md = fluid("diff", SANDBOX, "--from", "before", "--to", "after", "--markdown").stdout
    assert md.decode().startswith("# Changes in change")
    out = fluid_json(
        "export", SANDBOX, "--from", "before", "--to", "after", "--out", str(tmp_path / "pb")
    )
    assert out["digest"] == (tmp_path / "pb" / "DIGEST").read_text().strip()
    r = fluid("diff", SANDBOX, "--from", "before", "--to", "nope", check=False)
    assert r.returncode == 1 and b"no capture of change at checkpoint 'nope'" in r.stderr


def test_a_unit_change_is_captured_although_unchanged_units_reuse_the_probe(changed, settings):
    """list-unit-files is slow on a TCG guest, so captures of a sandbox whose systemd setup is
    unchanged reuse its output (as the empty diff above did); disabling a unit is seen all the
    same. (Last: it edits the module's sandbox.)"""
    r = sandboxes.run(SANDBOX, "systemctl disable --now nginx", timeout=120, settings=settings)
    assert r.exit_status == 0, r.stderr_text
    now = capture.capture(SANDBOX, settings=settings)
    assert now.state("services").units["nginx.service"].model_dump() == {
        "enablement": "disabled",
        "active": "inactive",
    }
    changes = compare(capture.load(SANDBOX, "after", settings), now, settings=settings)
    assert [(c.key, c.action) for c in changes.of("services")] == [("nginx.service", "modified")]


def test_a_capture_that_asks_systemd_only_about_changed_units_matches_a_full_one(changed, settings):
    """Captures ask list-unit-files only about units whose files or links changed since the
    sandbox's previous capture (its first, since its warm slot's boot); the result is what
    asking about every unit gives. (Edits the module's sandbox.)"""
    services = kinds()["services"]
    box = sandboxes.get(SANDBOX, settings)
    slot = box.domain_name.removeprefix(warm_slots.DOMAIN_PREFIX)
    assert box.boot == "warm" and warm_slots.memory(slot, services, settings).exists()
    assert capture._memory(services, SANDBOX, settings).exists()
    r = sandboxes.run(
        SANDBOX,
        "set -e\n"
        "systemctl mask cron.service\n"
        "printf '[Service]\\nExecStart=/bin/sleep 600\\n[Install]\\nWantedBy=multi-user.target\\n'"
        " > /etc/systemd/system/fluid-probe.service\n"
        "ln -s /etc/systemd/system/fluid-probe.service /etc/systemd/system/fluid-alias.service\n"
        "systemctl daemon-reload\n"
        "systemctl enable fluid-probe.service\n"
        "systemctl start fluid-probe.service\n"
        "rm /lib/systemd/system/getty-static.service\n"
        "systemctl daemon-reload",
        timeout=120,
        settings=settings,
    )
    assert r.exit_status == 0, r.stderr_text
    units = capture.capture(SANDBOX, settings=settings).state("services").units
    full = sandboxes.run(
        SANDBOX, services.standalone_probe(), output_cap=1 << 24, settings=settings
    )
    assert full.exit_status == 0, full.stderr_text
    everything = services.parse(full.stdout_text).units
    assert {n: u.enablement for n, u in units.items()} == {
        n: u.enablement for n, u in everything.items()
    }
    assert units["cron.service"].enablement == "masked"
    assert units["fluid-probe.service"].model_dump() == {
        "enablement": "enabled",
        "active": "active",
    }
    assert "getty-static.service" not in units


WATCHING = ("packages", "users", "cron", "sysctl")
# Each edit keeps the file's size (and inode where it writes in place): only stat's times show it.
SAME_SIZE_EDITS = """set -e
apt-mark auto nginx >/dev/null
chmod 0400 /etc/sudoers.d/deploy
echo '18 3 * * * root /usr/bin/true backup' > /etc/cron.d/fluid-backup
echo 'vm.swappiness = 20' > /etc/sysctl.d/60-fluid.conf
"""


def test_kinds_whose_files_did_not_change_are_not_probed_again_yet_see_every_edit(
    changed, settings
):
    """Packages, users, cron and sysctl read a few known files; while those files' stat data is
    what the sandbox's previous capture saw, a capture reuses that output instead of probing
    again. An edit to any of them, even one that keeps the size, is seen, and the result is
    what a full probe reports. (Edits the module's sandbox.)"""
    first = capture.capture(SANDBOX, settings=settings)
    again = capture.capture(SANDBOX, settings=settings)
    assert set(WATCHING) <= set(again.reused)
    assert all(again.state(k).model_dump() == first.state(k).model_dump() for k in WATCHING)

    r = sandboxes.run(SANDBOX, SAME_SIZE_EDITS, timeout=120, settings=settings)
    assert r.exit_status == 0, r.stderr_text
    edited = capture.capture(SANDBOX, settings=settings)

    assert not set(WATCHING) & set(edited.reused)
    assert "nginx" not in edited.state("packages").manual
    shown = sandboxes.run(SANDBOX, "apt-mark showmanual", output_cap=1 << 20, settings=settings)
    assert edited.state("packages").manual == sorted(
        {p.split(":")[0] for p in shown.stdout_text.split()}
    )
    assert edited.state("users").files["/etc/sudoers.d/deploy"].mode == 0o400
    assert [e.schedule for e in edited.state("cron").entries if e.job.endswith("backup")] == [
        "18 3 * * *"
    ]
    assert edited.state("sysctl").files["/etc/sysctl.d/60-fluid.conf"].settings == {
        "vm.swappiness": "20"
    }
    for name in WATCHING:
        kind = kinds()[name]
        full = sandboxes.run(
            SANDBOX, kind.standalone_probe(), output_cap=1 << 24, settings=settings
        )
        assert full.exit_status == 0, full.stderr_text
        fresh = kind.parse(unwatched(full.stdout_text)).model_dump()
        assert fresh == edited.state(name).model_dump(), name


# Every way a path can change: content, mode, owner, removal, renames of files and of whole
# directories, a directory moved in from a tree captures skip, a symlink pointed elsewhere.
FILE_CHURN = """set -e
mkdir -p /opt/churn/deep/er && echo one > /opt/churn/deep/er/file
echo two >> /etc/fluid-app.conf
chmod 0700 /opt/churn/deep
chown nobody /opt/churn/deep/er/file
rm /etc/with\\ space.conf
mv /opt/churn/deep /opt/churn/moved
mkdir -p /var/tmp/incoming/sub && echo three > /var/tmp/incoming/sub/inner
mv /var/tmp/incoming /srv/incoming
ln -sfn /etc/hostname /opt/current
mkdir /opt/gone && touch /opt/gone/a && rm -rf /opt/gone
"""


def _files_outside_noise(cap) -> dict[str, dict]:
    ignore = noise.ignore_patterns()
    # Who wrote a path is the journal's to know (it watched the write); a walk cannot tell.
    return {
        p: e.model_dump(exclude={"writer"})
        for p, e in cap.state("files").entries.items()
        if not noise.is_noise(p, ignore)
    }


def test_a_capture_built_from_the_journal_lists_what_walking_every_file_lists(changed, settings):
    """After the first capture, the guest's journal (fanotify) tells a capture which paths
    changed and only those are listed again; merged with the previous capture, that is what a
    walk of the whole filesystem finds. (Edits the module's sandbox.)"""
    capture.capture(SANDBOX, settings=settings)
    r = sandboxes.run(SANDBOX, FILE_CHURN, timeout=120, settings=settings)
    assert r.exit_status == 0, r.stderr_text
    from_journal = capture.capture(SANDBOX, settings=settings)
    files = kinds()["files"]
    capture._memory(files, SANDBOX, settings).unlink()  # nothing to build on: a full walk
    walked = capture.capture(SANDBOX, settings=settings)

    assert _files_outside_noise(from_journal) == _files_outside_noise(walked)
    entries = from_journal.state("files").entries
    assert entries["/opt/churn/moved/er/file"].owner == "nobody"
    assert entries["/srv/incoming/sub/inner"].type == "file"
    assert entries["/opt/current"].target == "/etc/hostname"
    gone = ("/opt/churn/deep", "/opt/churn/deep/er/file", "/etc/with space.conf", "/opt/gone")
    assert not set(gone) & set(entries)


def test_a_capture_whose_journal_died_walks_everything_and_starts_it_again(changed, settings):
    """Killing the journal loses nothing: the next capture walks the whole filesystem, and the
    journal runs again for the capture after. (Edits the module's sandbox.)"""
    # The walk reads the hash index the sandbox's first capture left in the guest; later
    # captures do not send it again.
    kept = sandboxes.run(SANDBOX, f"test -s {files._guest_index()}", settings=settings)
    assert kept.exit_status == 0, "the first capture left no hash index in the guest"
    files_kind = kinds()["files"]
    assert files._guest_index() in files_kind.uploads({"index": b"x", "previous": {"files": None}})
    assert files._guest_index() not in files_kind.uploads(
        {"index": b"x", "previous": {"files": "an earlier capture"}}
    )
    r = sandboxes.run(
        SANDBOX,
        "pkill -f 'files_probe[.]py --serve' && echo changed > /srv/after-the-journal",
        timeout=60,
        settings=settings,
    )
    assert r.exit_status == 0, r.stderr_text
    walked = capture.capture(SANDBOX, settings=settings)
    assert walked.state("files").entries["/srv/after-the-journal"].size == 8

    running = sandboxes.run(SANDBOX, "pgrep -f 'files_probe[.]py --serve'", settings=settings)
    assert running.exit_status == 0, "no journal runs after the capture"
    r = sandboxes.run(SANDBOX, "rm /srv/after-the-journal", settings=settings)
    assert (
        "/srv/after-the-journal"
        not in capture.capture(SANDBOX, settings=settings).state("files").entries
    )
