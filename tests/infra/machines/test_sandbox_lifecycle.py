"""A sandbox's life through the real CLI: create, exec, checkpoint, restore, fork, destroy."""

from __future__ import annotations

import json
import subprocess
import time

from infra.host import images
from infra.host.libvirt_host import connect, lookup
from infra.machines import checkpoints, sandbox_records
from tests.conftest import fluid, fluid_json, leftovers


def test_create_exec_checkpoint_restore_fork_destroy(golden_image, settings):
    created = fluid_json("sandbox", "create", "--name", "life")
    assert created["id"] == "life"
    assert isinstance(created["ssh_port"], int)
    fork_id = "life-fork"
    try:
        # exec passes output through byte for byte and exits with the command's status
        r = fluid(
            "sandbox",
            "exec",
            "life",
            "--",
            "printf 'a\\000\\377'; echo err >&2; exit 7",
            check=False,
        )
        assert (r.returncode, r.stdout, r.stderr) == (7, b"a\x00\xff", b"err\n")
        # several arguments are quoted as shlex.join does
        r = fluid("sandbox", "exec", "life", "--", "printf", "%s|", "two words", "$HOME")
        assert r.stdout == b"two words|$HOME|"

        fluid("sandbox", "exec", "life", "--", "echo kept > /root/kept")
        fluid("sandbox", "checkpoint", "life", "before")
        assert [c["name"] for c in fluid_json("sandbox", "checkpoints", "life")["checkpoints"]] == [
            "before"
        ]
        fluid("sandbox", "exec", "life", "--", "echo later > /root/later")
        # Restore well after the certificates' 30 s clock-skew allowance: the reverted guest's
        # clock is that far behind when fluid connects to correct it.
        time.sleep(40)
        fluid("sandbox", "restore", "life", "before")
        r = fluid("sandbox", "exec", "life", "--", "ls /root; date +%s")
        listed, guest_now = r.stdout.decode().split()[:-1], int(r.stdout.split()[-1])
        assert listed == ["kept"], "the file made after the checkpoint is gone, earlier kept"
        assert abs(guest_now - time.time()) < 30, "the guest clock is corrected after restore"

        # the base image is never written: the sandbox rests on it as a backing file (through
        # its warm slot's frozen overlay when it started warm), and the image knows it is held
        chain = json.loads(
            subprocess.run(
                ["qemu-img", "info", "-U", "--backing-chain", "--output=json"]
                + [str(settings.disks_dir / "life.qcow2")],
                check=True,
                capture_output=True,
            ).stdout
        )
        assert chain[-1]["filename"] == str(golden_image.disk_path)
        held = {str(p) for p in images.dependents(golden_image, settings)}
        assert {c["filename"] for c in chain[:-1]} & held

        fork = fluid_json("sandbox", "fork", "life", "before", "--name", fork_id)
        assert fork["parent_id"] == "life" and fork["parent_checkpoint"] == "before"
        r = fluid("sandbox", "exec", fork_id, "--", "cat /root/kept; ls /root")
        assert r.stdout == b"kept\nkept\n"
        ids = [
            fluid(
                "sandbox",
                "exec",
                sid,
                "--",
                "cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub; hostname",
            ).stdout
            for sid in ("life", fork_id)
        ]
        original, forked = (x.decode().splitlines() for x in ids)
        assert original[0] != forked[0], "machine-id differs"
        assert original[1] != forked[1], "SSH host key differs"
        assert (original[2], forked[2]) == ("life", fork_id)

        # stop powers off and keeps the disk; start boots it again with the same identity
        assert fluid_json("sandbox", "stop", fork_id)["state"] == "shut off"
        assert fluid_json("sandbox", "start", fork_id)["state"] == "running"
        after_restart = fluid(
            "sandbox",
            "exec",
            fork_id,
            "--",
            "cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub; hostname",
        )
        assert after_restart.stdout.decode().splitlines() == forked

        listed = fluid_json("sandbox", "list")
        assert {s["id"] for s in listed["sandboxes"]} >= {"life", fork_id}
        ours = {"life", fork_id, "fluid-sbx-life", f"fluid-sbx-{fork_id}"}
        assert not ours & set(listed["orphan_domains"] + listed["orphan_records"])
    finally:
        for sid in (fork_id, "life"):
            fluid("sandbox", "destroy", sid, check=False)
    for sid in ("life", fork_id):
        assert leftovers(sid, settings) == []
    conn = connect(settings)
    try:
        assert lookup(conn, sandbox_records.domain_name("life")) is None
    finally:
        conn.close()
    # destroy is idempotent in effect: a second one says there is nothing left
    r = fluid("sandbox", "destroy", "life", check=False)
    assert r.returncode == 1 and b"no sandbox 'life'" in r.stderr


def test_checkpoint_errors_are_specific(two_sandboxes, settings):
    nat, _ = two_sandboxes
    import pytest

    from infra.errors import CheckpointExists, CheckpointNotFound, InvalidName

    checkpoints.create(nat.id, "dup", settings)
    with pytest.raises(CheckpointExists):
        checkpoints.create(nat.id, "dup", settings)
    with pytest.raises(CheckpointNotFound, match="no checkpoint 'nope'"):
        checkpoints.restore(nat.id, "nope", settings)
    with pytest.raises(InvalidName):
        checkpoints.create(nat.id, "../evil", settings)
    checkpoints.delete(nat.id, "dup", settings)
    assert checkpoints.list_checkpoints(nat.id, settings) == []
