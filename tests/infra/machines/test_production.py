"""The production VM through the real CLI: a full copy, its identity, exec, its Prefect block
running a real playbook against it, and destroy. One VM boot for the whole module."""

import json
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError

from blocks import ProductionTarget
from blocks.production_target import JumpHost, ProductionHost
from infra.ansible.playbook_runs import run_playbook
from infra.errors import InvalidName
from infra.host import domains, ports
from infra.host.libvirt_host import connect, lookup
from infra.machines import production
from infra.records import store
from infra.settings import FluidSettings
from tests.conftest import PRODUCTION_ADDRESS, fluid, fluid_json
from tests.conftest import PRODUCTION_NAME as NAME


def leftovers(name: str, settings: FluidSettings) -> list[str]:
    """Everything still left of a production VM: domain, files, record."""
    found = []
    conn = connect(settings)
    try:
        if lookup(conn, production.domain_name(name)) is not None:
            found.append("domain")
    finally:
        conn.close()
    found += [str(p) for p in production.storage_dir(settings).glob(f"{name}.*")]
    with store.session(settings) as s:
        if s.get(store.ProductionRecord, name) is not None:
            found.append("record")
    return found


def write_playbook(d: Path, dest: str) -> Path:
    """A one-task playbook writing "applied by fluid" to `dest`."""
    d.mkdir()
    (d / "site.yml").write_text(
        "- hosts: all\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - ansible.builtin.copy:\n"
        '        content: "applied by fluid\\n"\n'
        f"        dest: {dest}\n"
        '        mode: "0640"\n'
    )
    return d


@pytest.fixture(scope="module")
def prod(production_vm: dict) -> dict:
    """The session's production VM (tests/conftest.py); this module's last test destroys it."""
    return production_vm


@pytest.mark.parametrize("name", ["../x", "Upper", "-lead", "a/b", "x" * 70])
def test_bad_names_are_refused_before_anything_boots(settings, name):
    with pytest.raises(InvalidName, match="invalid production name"):
        production.create(name, settings=settings)
    r = fluid("production", "create", "--no-block", "--", name, check=False)
    assert r.returncode == 1 and b"invalid production name" in r.stderr and r.stdout == b""


def test_an_unknown_image_is_refused_and_nothing_is_left(golden_image, settings):
    r = fluid("production", "create", "t-production-bad", "--image", "no-such-image", check=False)
    assert r.returncode == 1 and b"no image 'no-such-image'" in r.stderr and r.stdout == b""
    assert leftovers("t-production-bad", settings) == []


def test_create_makes_a_full_copy_with_fluid_identity(prod, settings):
    assert prod["name"] == NAME and prod["state"] == "running"
    assert isinstance(prod["ssh_port"], int)
    # Recorded (and so in its ProductionTarget block) where other hosts reach it, and listening
    # there only.
    assert prod["address"] == PRODUCTION_ADDRESS
    assert not ports.is_free(prod["ssh_port"], PRODUCTION_ADDRESS)
    assert ports.is_free(prod["ssh_port"], "127.0.0.1")
    assert prod["principal"] == f"fluid-prod-{NAME}"
    assert prod["host_key"].startswith("ssh-ed25519 ")
    assert prod["block"] == f"fluid-production-target/{NAME}"

    disk = production.storage_dir(settings) / f"{NAME}.qcow2"
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(disk)],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2"
    assert "backing-filename" not in info, "a full copy rests on no image"

    conn = connect(settings)
    try:
        dom = lookup(conn, f"fluid-prod-{NAME}")
        assert dom is not None and dom.isActive()
        meta = domains.read_metadata(dom)
    finally:
        conn.close()
    assert meta is not None
    assert (meta.kind, meta.id, meta.expires_at) == ("production", NAME, None)

    with store.session(settings) as s:
        rec = s.get(store.ProductionRecord, NAME)
    assert rec is not None and rec.ssh_port == prod["ssh_port"] and rec.disk_path == str(disk)

    # a second create of the same name is refused at once, and the VM is untouched
    r = fluid("production", "create", NAME, "--no-block", check=False)
    assert r.returncode == 1 and b"already exists" in r.stderr
    assert production.get(NAME, settings).state == "running"


def test_exec_has_the_sandbox_exec_contract(prod):
    r = fluid(
        "production", "exec", NAME, "--", "printf 'a\\000\\377'; echo err >&2; exit 7", check=False
    )
    assert (r.returncode, r.stdout, r.stderr) == (7, b"a\x00\xff", b"err\n")
    r = fluid("production", "exec", NAME, "--", "printf", "%s|", "two words", "$HOME")
    assert r.stdout == b"two words|$HOME|"
    r = fluid(
        "production", "exec", "--timeout", "2", NAME, "--", "echo early; sleep 30", check=False
    )
    assert r.returncode == 124 and r.stdout == b"early\n" and b"timeout" in r.stderr
    # the guest took its identity from the kernel command line
    r = fluid("production", "exec", NAME, "--", "hostname; cat /etc/ssh/fluid_principals")
    assert r.stdout == f"prod-{NAME}\nfluid-prod-{NAME}\n".encode()


def test_the_saved_block_runs_a_real_playbook(prod, prefect_stack, settings, tmp_path: Path):
    saved = ProductionTarget.load(NAME)
    fields = {"hosts", "user", "become", "become_user", "private_key", "certificate_principal"}
    expected = ProductionTarget.for_vm(production.get(NAME, settings))
    assert saved.model_dump(include=fields) == expected.model_dump(include=fields)
    assert saved.hosts[0].port == prod["ssh_port"]
    assert saved.certificate_principal == f"fluid-prod-{NAME}"

    hosts = saved.ansible_hosts(tmp_path / "creds", settings)
    assert [(h.address, h.port, h.user) for h in hosts] == [
        (PRODUCTION_ADDRESS, prod["ssh_port"], "root")
    ]
    for f in (tmp_path / "creds").rglob("*"):
        if f.is_file():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f

    playbook = write_playbook(tmp_path / "change", "/root/applied")
    run = run_playbook(playbook, hosts)
    assert run.succeeded, run.output_tail
    assert run.changed == {NAME: 1}
    r = fluid("production", "exec", NAME, "--", "stat -c %a /root/applied; cat /root/applied")
    assert r.stdout == b"640\napplied by fluid\n"


def test_a_target_behind_a_jump_host_is_reached_through_it(prod, settings, tmp_path: Path):
    """The VM's sshd as seen from inside it (127.0.0.1:22) is reachable only through a jump
    host, here the VM itself; a jump host showing another host key is refused."""
    vm = production.get(NAME, settings)
    inside = ProductionHost(name=NAME, address="127.0.0.1", port=22, host_key=vm.host_key)
    direct = ProductionTarget.for_vm(vm).model_copy(update={"hosts": [inside]})
    jump = JumpHost(address=vm.address, port=vm.ssh_port, host_key=vm.host_key)
    behind = direct.model_copy(update={"jump_host": jump})
    playbook = write_playbook(tmp_path / "jumped", "/root/jumped")

    # Without the jump host that address is not the VM: nothing answers, or another key.
    alone = run_playbook(playbook, direct.ansible_hosts(tmp_path / "direct", settings))
    assert alone.unreachable == {NAME: 1}, alone.output_tail

    run = run_playbook(playbook, behind.ansible_hosts(tmp_path / "creds", settings))
    assert run.succeeded and run.changed == {NAME: 1}, run.output_tail
    r = fluid("production", "exec", NAME, "--", "cat /root/jumped")
    assert r.stdout == b"applied by fluid\n"

    other = Ed25519PrivateKey.generate().public_key()
    line = other.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    liar = behind.model_copy(
        update={"jump_host": JumpHost(address=vm.address, port=vm.ssh_port, host_key=line)}
    )
    refused = run_playbook(
        write_playbook(tmp_path / "refused", "/root/refused"),
        liar.ansible_hosts(tmp_path / "liar", settings),
    )
    assert refused.unreachable == {NAME: 1}, refused.output_tail
    r = fluid("production", "exec", NAME, "--", "test -e /root/refused", check=False)
    assert r.returncode == 1


@pytest.mark.parametrize("address", ["-oProxyCommand=touch /tmp/x", "web 1", "", "a;b", "$(id)"])
def test_an_address_that_is_not_a_host_is_refused_when_the_block_is_built(address: str):
    with pytest.raises(ValidationError, match="address"):
        ProductionHost(name="web-1", address=address)
    with pytest.raises(ValidationError, match="address"):
        JumpHost(address=address)


def test_list_and_start_of_a_running_vm(prod):
    listed = fluid_json("production", "list")
    ours = [v for v in listed["vms"] if v["name"] == NAME]
    assert len(ours) == 1 and ours[0]["state"] == "running"
    assert f"fluid-prod-{NAME}" not in listed["orphan_domains"]
    # start of a running VM changes nothing
    assert fluid_json("production", "start", NAME)["state"] == "running"


def test_destroy_leaves_nothing_and_a_second_destroy_says_so(prod, settings):
    fluid("production", "destroy", NAME)
    assert leftovers(NAME, settings) == []
    r = fluid("production", "destroy", NAME, check=False)
    assert r.returncode == 1 and f"no production VM '{NAME}'".encode() in r.stderr
