"""What a hostile sandbox can reach on the host, and what it could read there: nothing.

The network guard is checked (table, hook, QEMU's uid, verdicts) and put back before every
QEMU start; a `nat` sandbox reaches no link-local or private address unless FLUID_EGRESS_ALLOW
names it; what fluid keeps at rest is root's alone (QEMU's group may only enter the storage
it opens). Traffic goes only to loopback and into a network namespace a test makes itself.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from infra.errors import SettingsError
from infra.host import firewall, images
from infra.host.permissions import qemu_dir
from infra.machines import checkpoints, sandbox_records, sandboxes, warm_slots
from infra.records import audit, store
from infra.settings import FluidSettings
from infra.transport.ssh_ca import authority
from orchestration import control_plane

NS_HOST, NS_GUEST, NS_PORT = "169.254.77.1", "169.254.77.2", 8077


def probe(address: str, port: int) -> str:
    """A guest command that prints OPEN <greeting> or CLOSED <why> for address:port."""
    return (
        'python3 -c "import socket; s=socket.socket(); s.settimeout(5)\n'
        f"try:\n s.connect(('{address}', {port})); print('OPEN', s.recv(16).decode())\n"
        "except OSError as e: print('CLOSED', e)\""
    )


def nft_table() -> list[dict]:
    r = subprocess.run(
        ["nft", "-j", "list", "table", "inet", firewall.TABLE], capture_output=True, text=True
    )
    assert r.returncode == 0, f"fluid's table is not loaded: {r.stderr}"
    return json.loads(r.stdout)["nftables"]


def delete_guard() -> None:
    """What an `nft flush ruleset` does to fluid (without touching anyone else's tables)."""
    subprocess.run(["nft", "delete", "table", "inet", firewall.TABLE], check=True)
    assert firewall.check() == [f"table inet {firewall.TABLE} is not loaded"]


@contextmanager
def guard_events() -> Iterator[list[tuple[float, str]]]:
    """`nft monitor tables` lines, each with the boot-clock second it was read at."""
    proc = subprocess.Popen(["nft", "monitor", "tables"], stdout=subprocess.PIPE, text=True)
    events: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            events.append((time.clock_gettime(time.CLOCK_BOOTTIME), line.strip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)  # subscribed before anything happens
    try:
        yield events
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)


def qemu_started_at(sandbox_id: str, settings: FluidSettings) -> float:
    """Boot-clock second the sandbox's running QEMU process started."""
    domain = sandbox_records.record(sandbox_id, settings).domain_name
    pid = int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text())
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime


def assert_guard_back_before_qemu(
    events: list[tuple[float, str]], sandbox_id: str, settings: FluidSettings
) -> None:
    assert firewall.check(settings) == []
    uids = {
        m["match"]["right"]
        for item in nft_table()
        if "rule" in item
        for m in item["rule"]["expr"]
        if m.get("match", {}).get("left") == {"meta": {"key": "skuid"}}
    }
    assert uids == {firewall.qemu_uid()}
    added = [t for t, line in events if line == f"add table inet {firewall.TABLE}"]
    assert added, f"the guard was not put back: {events}"
    assert min(added) < qemu_started_at(sandbox_id, settings)


def wait_for(condition: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@dataclass
class GuardedBox:
    id: str
    created_events: list[tuple[float, str]]


@pytest.fixture(scope="module")
def nat_box(golden_image: images.ImageManifest, settings: FluidSettings) -> Iterator[GuardedBox]:
    """A nat sandbox, created while fluid's table was missing (so creation put it back)."""
    with guard_events() as events:
        delete_guard()
        box = sandboxes.create("t-hostile-host", network="nat", settings=settings)
    try:
        yield GuardedBox(box.id, events)
    finally:
        sandboxes.destroy(box.id, settings)
        firewall.ensure_guard(settings)


_LISTENER = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hello")
    c.close()
    print("accepted", flush=True)
"""


@pytest.fixture
def link_local_service() -> Iterator[list[str]]:
    """A TCP service on a link-local address inside a network namespace of its own (a stand-in
    for a metadata service), reached from the host over a veth pair; yields its accept log."""
    tag = os.urandom(3).hex()
    ns, host_if, ns_if = f"fluid-t-{tag}", f"fth{tag}", f"ftn{tag}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("netns", "add", ns)
    listener = None
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        ip("addr", "add", f"{NS_HOST}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{NS_GUEST}/30", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        listener = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _LISTENER, NS_GUEST, str(NS_PORT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listener.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        log: list[str] = []

        def read() -> None:
            for line in listener.stdout:  # type: ignore[union-attr]
                log.append(line.strip())

        threading.Thread(target=read, daemon=True).start()
        # The host itself (not QEMU's user) reaches it: the namespace works.
        with socket.create_connection((NS_GUEST, NS_PORT), timeout=5) as c:
            assert c.recv(16) == b"hello"
        assert wait_for(lambda: log == ["accepted"])
        log.clear()
        yield log
    finally:
        if listener is not None:
            listener.kill()
            listener.wait(10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # takes the veth too
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


# --- the ruleset -----------------------------------------------------------------------------


def _rules_text() -> list[str]:
    r = subprocess.run(
        ["nft", "list", "table", "inet", firewall.TABLE], capture_output=True, text=True
    )
    return [line.strip() for line in r.stdout.splitlines() if "skuid" in line]


def test_the_guard_rejects_private_and_link_local_destinations_for_qemu_only(settings):
    firewall.ensure_guard(settings)
    chain = [i["chain"] for i in nft_table() if "chain" in i]
    assert [(c["name"], c["type"], c["hook"], c["policy"]) for c in chain] == [
        ("output", "filter", "output", "accept")
    ]
    uid = firewall.qemu_uid()
    lines = _rules_text()
    assert all(f"meta skuid {uid} " in line for line in lines)
    # DNS to the host's resolvers (QEMU's DNS forwards to them), port 53 only, comes first.
    servers = [n for n in firewall.nameservers() if n.version == 4]
    if servers:
        assert lines[0].startswith(f"meta skuid {uid} ip daddr ")
        assert lines[0].endswith("meta l4proto { tcp, udp } th dport 53 accept")
        assert all(str(n.network_address) in lines[0] for n in servers)
    assert any(line.startswith('oifname "lo"') and line.endswith(" reject") for line in lines)
    v4, v6 = lines[-2], lines[-1]
    for cidr in ("10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12"):
        assert cidr in v4
    assert "192.168.0.0/16" in v4 and "224.0.0.0/4" in v4
    assert v4.endswith("reject with icmp port-unreachable")
    for cidr in ("fc00::/7", "fe80::/10", "ff00::/8"):
        assert cidr in v6
    assert v6.endswith("reject with icmpv6 port-unreachable")


def test_the_allow_list_opens_only_what_it_names_and_never_loopback(settings):
    allow = FluidSettings(egress_allow="169.254.77.0/30, 10.20.0.0/16 fd12:3456::/48")
    assert allow.egress_allow == "169.254.77.0/30,10.20.0.0/16,fd12:3456::/48"
    rules = firewall.rules(allow)
    loopback = next(i for i, r in enumerate(rules) if r.loopback)
    accepts = [i for i, r in enumerate(rules) if r.verdict == "accept" and not r.dns]
    assert [rules[i].daddr for i in accepts] == [
        ("10.20.0.0/16", "169.254.77.0/30"),
        ("fd12:3456::/48",),
    ]
    # Loopback is rejected before the allow-list; the private ranges after it.
    assert all(loopback < i < len(rules) - 2 for i in accepts)
    opened = firewall.rules(FluidSettings(egress_allow="127.0.0.0/8"))
    at = opened.index(next(r for r in opened if r.daddr == ("127.0.0.0/8",)))
    assert at > next(i for i, r in enumerate(opened) if r.loopback)
    with pytest.raises(SettingsError, match="'mirror.lan' is not a CIDR"):
        FluidSettings(egress_allow="mirror.lan")


def test_a_wrong_or_outdated_guard_is_replaced(settings):
    uid = firewall.qemu_uid()
    stale = {
        # An older fluid's table: loopback only.
        "outdated": f'oifname "lo" meta skuid {uid} ct state new counter reject',
        # The rules for someone else's uid.
        "wrong uid": f'oifname "lo" meta skuid {uid + 1} ct state new counter reject',
    }
    for what, rule in stale.items():
        table = (
            f"table inet {firewall.TABLE}\ndelete table inet {firewall.TABLE}\n"
            f"table inet {firewall.TABLE} {{\n chain output {{\n"
            f"  type filter hook output priority 0; policy accept;\n  {rule}\n }}\n}}\n"
        )
        subprocess.run(["nft", "-f", "-"], input=table, text=True, check=True)
        problems = firewall.check(settings)
        assert problems, what
        if what == "wrong uid":
            assert problems[0] == f"rule 1 is for uid {uid + 1}, not QEMU's uid {uid}"
        firewall.ensure_guard(settings)
        assert firewall.check(settings) == [], what


def test_the_dns_resolvers_are_read_from_resolv_conf(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch lan\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\n"
        "nameserver not-an-address\noptions edns0\n"
    )
    assert firewall.nameservers(conf) == [
        ipaddress.ip_network("10.255.255.53/32"),
        ipaddress.ip_network("fe80::1/128"),
    ]


# --- on a real sandbox ------------------------------------------------------------------------


def test_creating_a_sandbox_puts_a_missing_guard_back_before_qemu_starts(nat_box, settings):
    assert_guard_back_before_qemu(nat_box.created_events, nat_box.id, settings)


def test_a_nat_sandbox_cannot_reach_a_link_local_service_unless_allowed(
    nat_box, settings, link_local_service
):
    firewall.ensure_guard(settings)
    out = sandboxes.run(nat_box.id, probe(NS_GUEST, NS_PORT), settings=settings).stdout_text
    assert out.startswith("CLOSED"), out
    assert link_local_service == []
    try:
        firewall.ensure_guard(FluidSettings(egress_allow="169.254.77.0/30"))
        out = sandboxes.run(nat_box.id, probe(NS_GUEST, NS_PORT), settings=settings).stdout_text
        assert out == "OPEN hello\n"
        assert wait_for(lambda: link_local_service == ["accepted"])
    finally:
        firewall.ensure_guard(settings)
    out = sandboxes.run(nat_box.id, probe(NS_GUEST, NS_PORT), settings=settings).stdout_text
    assert out.startswith("CLOSED"), out
    assert link_local_service == ["accepted"]


def test_starting_a_stopped_sandbox_puts_the_guard_back_first(nat_box, settings, host_service):
    sandboxes.stop(nat_box.id, settings)
    with guard_events() as events:
        delete_guard()
        sandboxes.start(nat_box.id, settings)
    assert_guard_back_before_qemu(events, nat_box.id, settings)
    out = sandboxes.run(nat_box.id, probe("10.0.2.2", host_service), settings=settings)
    assert out.stdout_text.startswith("CLOSED"), out.stdout_text


def test_restoring_a_checkpoint_puts_the_guard_back_before_qemu_starts(nat_box, settings):
    checkpoints.create(nat_box.id, "guarded", settings, capture=False)
    sandboxes.run(nat_box.id, "touch /root/after-checkpoint", settings=settings)
    sandboxes.stop(nat_box.id, settings)
    with guard_events() as events:
        delete_guard()
        checkpoints.restore(nat_box.id, "guarded", settings)  # starts QEMU: it was stopped
    assert_guard_back_before_qemu(events, nat_box.id, settings)
    out = sandboxes.run(nat_box.id, "ls /root/after-checkpoint || echo gone", settings=settings)
    assert out.stdout_text.endswith("gone\n")


# --- secrets at rest --------------------------------------------------------------------------


def _mode(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_what_fluid_keeps_is_roots_alone_after_a_sandbox_ran(nat_box, settings):
    sandboxes.run(nat_box.id, "true", settings=settings)
    control_plane.auth_string(settings)
    home = settings.home
    db = Path(settings.db_url.removeprefix("sqlite:///"))
    for d in (home, settings.runs_dir, home / "ca", home / "audit", settings.prefect_dir):
        assert _mode(d)[0] == 0o700, d
    files = [
        db,
        settings.ca_key_path,
        audit.key_path(settings),
        audit.witness_path(settings),
        settings.prefect_dir / "auth-string",
    ]
    files += [p for p in (Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]
    for f in files:
        assert _mode(f)[0] == 0o600, f
    # QEMU's group may enter the storage it opens by path; nobody else may enter or list it.
    gid = firewall.qemu_gid()
    shared = [
        settings.storage_dir,
        settings.images_dir,
        settings.disks_dir,
        settings.logs_dir,
        Path(sandbox_records.record(nat_box.id, settings).disk_path).parent,
    ]
    if warm_slots.pool_dir(settings).exists():
        shared += [warm_slots.pool_dir(settings).parent, warm_slots.pool_dir(settings)]
    for d in shared:
        assert _mode(d) == (0o710, 0, gid), d
    assert _mode(settings.cache_dir)[0] == 0o700


def test_an_older_installs_loose_modes_are_tightened_on_use(tmp_path):
    settings = FluidSettings(home=tmp_path / "home")
    for d in (settings.home, settings.runs_dir, settings.home / "ca", settings.home / "audit"):
        d.mkdir(parents=True, mode=0o755)
        d.chmod(0o755)
    db = settings.home / "fluid.db"
    for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        f.touch(mode=0o644)
        f.chmod(0o644)
    storage = tmp_path / "storage"
    (storage / "disks").mkdir(parents=True)
    for d in (storage, storage / "disks"):
        d.chmod(0o755)

    store.engine(settings)
    audit.append("command", actor="t", summary="first use", settings=settings)
    authority(settings)
    qemu_dir(storage / "disks", storage)

    for d in (settings.home, settings.runs_dir, settings.home / "ca", settings.home / "audit"):
        assert _mode(d)[0] == 0o700, d
    for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), settings.ca_key_path):
        assert _mode(f)[0] == 0o600, f
    for d in (storage, storage / "disks"):
        assert _mode(d) == (0o710, 0, firewall.qemu_gid()), d


def test_new_private_dirs_are_never_open_wider(tmp_path):
    """Missing parents are made 0700 too (mkdir's parents=True would give them 0755)."""
    settings = FluidSettings(home=tmp_path / "a" / "b" / "home")
    audit.ensure_key(settings)
    for d in (tmp_path / "a", tmp_path / "a" / "b", settings.home, settings.home / "audit"):
        assert _mode(d)[0] == 0o700, d
