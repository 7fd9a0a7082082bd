"""What a sandbox can reach: the mirror (nat only), never the host's loopback or a neighbour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from infra.errors import SSHError
from infra.machines import lifecycle, sandbox_records, sandboxes
from infra.transport import ssh, ssh_ca

MIRROR_PROBE = (
    'python3 -c "import urllib.request as u; '
    "print(u.urlopen('http://deb.debian.org/debian/dists/bookworm/Release', timeout=15).status)\""
)


def connect_probe(port: int) -> str:
    """A guest command that prints OPEN or CLOSED for 10.0.2.2:port (the host's loopback)."""
    return (
        'python3 -c "import socket; s=socket.socket(); s.settimeout(5)\n'
        f"try:\n s.connect(('10.0.2.2', {port})); print('OPEN')\n"
        "except OSError as e: print('CLOSED', e)\""
    )


def test_nat_reaches_the_debian_mirror_and_isolated_does_not(two_sandboxes, settings):
    nat, isolated = two_sandboxes
    assert (
        sandboxes.run(nat.id, MIRROR_PROBE, timeout=60, settings=settings).stdout_text.strip()
        == "200"
    )
    r = sandboxes.run(isolated.id, MIRROR_PROBE, timeout=60, settings=settings)
    assert r.exit_status != 0, r.stdout_text


@pytest.mark.parametrize("mode", ["nat", "isolated"])
def test_a_sandbox_cannot_reach_host_services(two_sandboxes, settings, host_service, mode):
    box = two_sandboxes[0] if mode == "nat" else two_sandboxes[1]
    out = sandboxes.run(box.id, connect_probe(host_service), settings=settings).stdout_text
    assert out.startswith("CLOSED"), out


def test_two_sandboxes_run_at_once_without_seeing_each_other(two_sandboxes, settings):
    nat, isolated = two_sandboxes
    # Other session-scoped sandboxes (the agent tests' one) may be running too.
    states = {s.id: s.state for s in sandboxes.list_sandboxes(settings).sandboxes}
    assert {k: v for k, v in states.items() if k in (nat.id, isolated.id)} == {
        nat.id: "running",
        isolated.id: "running",
    }
    # each one's SSH forward listens on the host's loopback; the other must not reach it
    for box, other in ((nat, isolated), (isolated, nat)):
        out = sandboxes.run(box.id, connect_probe(other.ssh_port), settings=settings).stdout_text
        assert out.startswith("CLOSED"), out
    names = [sandboxes.run(b.id, "hostname", settings=settings).stdout_text for b in two_sandboxes]
    assert names == ["t-nat\n", "t-iso\n"]


def test_an_expired_certificate_is_refused_by_the_guest(two_sandboxes, settings):
    nat, _ = two_sandboxes
    rec_key = sandbox_records.record(nat.id, settings).host_key
    ca = ssh_ca.authority(settings)
    old = ca.issue(
        lifecycle.principal(nat.id),
        timedelta(minutes=5),
        now=datetime.now(UTC) - timedelta(minutes=20),
    )
    with pytest.raises(SSHError):
        ssh.GuestConnection("127.0.0.1", nat.ssh_port, old, rec_key)
    fresh = ca.issue(lifecycle.principal(nat.id), timedelta(minutes=1))
    with ssh.GuestConnection("127.0.0.1", nat.ssh_port, fresh, rec_key) as g:
        assert g.run("whoami").stdout == b"root\n"


def test_a_certificate_for_another_sandbox_is_refused(two_sandboxes, settings):
    nat, isolated = two_sandboxes
    ca = ssh_ca.authority(settings)
    wrong = ca.issue(lifecycle.principal(isolated.id), timedelta(minutes=2))
    with pytest.raises(SSHError):
        ssh.GuestConnection(
            "127.0.0.1", nat.ssh_port, wrong, sandbox_records.record(nat.id, settings).host_key
        )


def test_no_password_works_and_root_is_locked(two_sandboxes, settings):
    nat, _ = two_sandboxes
    out = sandboxes.run(
        nat.id,
        "passwd -S root; sshd -T | grep -E "
        "'^(passwordauthentication|kbdinteractiveauthentication|"
        "trustedusercakeys|authorizedkeysfile)'",
        settings=settings,
    ).stdout_text
    assert out.split()[1] == "L"
    assert "passwordauthentication no" in out
    assert "kbdinteractiveauthentication no" in out
    assert "trustedusercakeys /etc/ssh/fluid_user_ca.pub" in out
    assert "authorizedkeysfile .ssh/authorized_keys .ssh/authorized_keys2" in out


def test_a_huge_output_is_capped_and_a_slow_command_is_killed(two_sandboxes, settings):
    from infra.errors import CommandTimeout

    nat, _ = two_sandboxes
    r = sandboxes.run(
        nat.id, "head -c 50000000 /dev/zero | tr '\\0' a; echo END", timeout=240, settings=settings
    )
    assert r.exit_status == 0
    assert r.stdout_cut > 49_000_000
    assert r.stdout.startswith(b"aaaa") and r.stdout.endswith(b"aEND\n")
    assert len(r.stdout) < 31_000
    with pytest.raises(CommandTimeout, match="timeout"):
        sandboxes.run(nat.id, "sleep 41.5; echo never", timeout=3, settings=settings)
    assert (
        sandboxes.run(nat.id, "pgrep -f 'slee[p] 41.5' || echo none", settings=settings).stdout_text
        == "none\n"
    )
    recorded = sandboxes.commands(nat.id, settings)
    assert any(c.timed_out and "sleep 41.5" in c.command for c in recorded)


def test_ssh_opens_a_real_openssh_session(two_sandboxes, settings):
    from tests.conftest import fluid

    nat, _ = two_sandboxes
    r = fluid("sandbox", "ssh", nat.id, "--", "echo", "via-openssh")
    assert r.stdout == b"via-openssh\n"
