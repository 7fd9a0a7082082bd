"""SSH CA and guest SSH against a real OpenSSH server on loopback (no mocks)."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import infra.transport.ssh
from infra.errors import (
    CAKeyPermissions,
    CommandTimeout,
    HostKeyMismatch,
    InvalidCertificateTTL,
    SSHError,
)
from infra.transport.command_output import CUT_MARKER, CommandResult
from infra.transport.ssh import GuestConnection, openssh_command, ping
from infra.transport.ssh_ca import CertificateAuthority, SessionCredentials
from tests.repo import ROOT

SSHD = Path("/usr/sbin/sshd")
PRINCIPAL = "sandbox-test"
REPO = ROOT


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    host_key: str


def _wait_for_sshd_binary() -> None:
    # scripts/setup-host.sh installs openssh-server; it may still be running.
    deadline = time.monotonic() + 600
    while not SSHD.exists():
        if (REPO / ".venv" / ".fluid-installed").exists() or time.monotonic() > deadline:
            pytest.fail(f"{SSHD} is missing; run scripts/setup-host.sh (installs openssh-server)")
        time.sleep(2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"sshd did not listen on 127.0.0.1:{port}:\n{log.read_text()}")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca") / "ca" / "ca_key")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory, ca: CertificateAuthority) -> Iterator[SshServer]:
    _wait_for_sshd_binary()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    d = tmp_path_factory.mktemp("sshd")
    d.chmod(0o700)
    host_key = d / "host_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
        check=True,
    )
    (d / "ca.pub").write_text(ca.public_key_line() + "\n")
    (d / "principals").write_text(PRINCIPAL + "\n")
    port = _free_port()
    config = d / "sshd_config"
    config.write_text(
        f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
TrustedUserCAKeys {d / "ca.pub"}
AuthorizedPrincipalsFile {d / "principals"}
AuthorizedKeysFile none
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile none
StrictModes no
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""
    )
    config.chmod(0o600)
    log = d / "sshd.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_port(port, proc, log)
        yield SshServer("127.0.0.1", port, (d / "host_ed25519.pub").read_text().strip())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def creds(ca: CertificateAuthority) -> SessionCredentials:
    return ca.issue(PRINCIPAL)


@pytest.fixture
def conn(sshd: SshServer, creds: SessionCredentials) -> Iterator[GuestConnection]:
    with GuestConnection(sshd.host, sshd.port, creds, sshd.host_key) as c:
        yield c


def _other_public_key_line() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


# --- certificate authority -------------------------------------------------------------------


def test_certificate_is_a_short_lived_user_cert_with_only_permit_pty(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    creds = ca.issue(PRINCIPAL, timedelta(minutes=3), key_id="job-42", now=now)
    cert = serialization.load_ssh_public_identity(creds.certificate.encode())
    assert isinstance(cert, serialization.SSHCertificate)
    assert cert.type == serialization.SSHCertificateType.USER
    assert cert.valid_principals == [PRINCIPAL.encode()]
    assert cert.extensions == {b"permit-pty": b""}
    assert cert.critical_options == {}
    assert cert.key_id == b"job-42"
    assert cert.valid_after == int((now - timedelta(seconds=30)).timestamp())
    assert cert.valid_before == int((now + timedelta(minutes=3)).timestamp())
    assert creds.valid_before == datetime.fromtimestamp(cert.valid_before, UTC)
    cert.verify_cert_signature()


def test_only_a_certificate_asked_for_a_jump_host_may_open_tunnels(
    ca: CertificateAuthority,
) -> None:
    creds = ca.issue(PRINCIPAL, timedelta(minutes=3), port_forwarding=True)
    cert = serialization.load_ssh_public_identity(creds.certificate.encode())
    assert isinstance(cert, serialization.SSHCertificate)
    assert cert.extensions == {b"permit-port-forwarding": b"", b"permit-pty": b""}
    assert cert.signature_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode() == " ".join(ca.public_key_line().split()[:2])
    assert creds.certificate.startswith("ssh-ed25519-cert-v01@openssh.com AAAA")
    assert "\n" not in creds.certificate


def test_every_certificate_has_a_fresh_key_pair_and_serial(ca: CertificateAuthority) -> None:
    a, b = ca.issue(PRINCIPAL), ca.issue(PRINCIPAL)
    assert a.private_key_openssh != b.private_key_openssh
    cert_a = serialization.load_ssh_public_identity(a.certificate.encode())
    cert_b = serialization.load_ssh_public_identity(b.certificate.encode())
    assert isinstance(cert_a, serialization.SSHCertificate)
    assert isinstance(cert_b, serialization.SSHCertificate)
    assert cert_a.serial != cert_b.serial


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=59), timedelta(minutes=11)])
def test_ttl_outside_one_to_ten_minutes_is_refused(
    ca: CertificateAuthority, ttl: timedelta
) -> None:
    with pytest.raises(InvalidCertificateTTL, match="between 1 and 10 minutes"):
        ca.issue(PRINCIPAL, ttl)


@pytest.mark.parametrize("ttl", [timedelta(minutes=1), timedelta(minutes=10)])
def test_ttl_bounds_are_inclusive(ca: CertificateAuthority, ttl: timedelta) -> None:
    assert ca.issue(PRINCIPAL, ttl).principal == PRINCIPAL


def test_ca_key_file_is_created_0600_in_a_0700_dir_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "ca_key"
    ca = CertificateAuthority.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert CertificateAuthority.load_or_create(path).public_key_line() == ca.public_key_line()
    from_secret = CertificateAuthority.from_private_key(path.read_text())
    assert from_secret.public_key_line() == ca.public_key_line()
    assert ca.public_key_line().startswith("ssh-ed25519 AAAA")
    assert ca.public_key_line().endswith(" fluid-ca")


def test_group_readable_ca_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ca_key"
    CertificateAuthority.load_or_create(path)
    path.chmod(0o640)
    with pytest.raises(CAKeyPermissions, match="chmod 600"):
        CertificateAuthority.load_or_create(path)


def test_session_files_are_written_with_private_modes(
    creds: SessionCredentials, tmp_path: Path
) -> None:
    key_path = creds.write_files(tmp_path / "session")
    assert key_path == tmp_path / "session" / "id"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_text() == creds.private_key_openssh
    cert_path = tmp_path / "session" / "id-cert.pub"
    assert cert_path.read_text().strip() == creds.certificate


# --- authentication and host keys ------------------------------------------------------------


def test_certificate_runs_a_command_with_exact_streams_and_status(
    conn: GuestConnection,
) -> None:
    result = conn.run("printf 'a\\nb'; printf err >&2; exit 3")
    assert result.stdout == b"a\nb"
    assert result.stderr == b"err"
    assert result.exit_status == 3
    assert (result.stdout_cut, result.stderr_cut) == (0, 0)
    assert result.timed_out is False
    assert result.ended_at >= result.started_at
    assert result.duration_s >= 0


def test_binary_output_without_trailing_newline_is_kept_byte_for_byte(
    conn: GuestConnection,
) -> None:
    result = conn.run("printf '\\000\\377'")
    assert result.stdout == b"\x00\xff"
    assert result.exit_status == 0
    assert result.stdout_text == "\x00\ufffd"


def test_command_result_round_trips_through_json(conn: GuestConnection) -> None:
    result = conn.run("printf '\\000\\377'; printf x >&2")
    again = CommandResult.model_validate_json(result.model_dump_json())
    assert again == result


def test_expired_certificate_is_refused(ca: CertificateAuthority, sshd: SshServer) -> None:
    expired = ca.issue(PRINCIPAL, now=datetime.now(UTC) - timedelta(minutes=20))
    with pytest.raises(SSHError, match="expired") as info:
        GuestConnection(sshd.host, sshd.port, expired, sshd.host_key)
    assert not isinstance(info.value, HostKeyMismatch)


def test_certificate_for_another_principal_is_refused(
    ca: CertificateAuthority, sshd: SshServer
) -> None:
    stranger = ca.issue("someone-else")
    with pytest.raises(SSHError, match="principal"):
        GuestConnection(sshd.host, sshd.port, stranger, sshd.host_key)


def test_certificate_from_another_ca_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    rogue = CertificateAuthority.load_or_create(tmp_path / "rogue_ca")
    with pytest.raises(SSHError):
        GuestConnection(sshd.host, sshd.port, rogue.issue(PRINCIPAL), sshd.host_key)


def test_wrong_host_key_is_a_mismatch(sshd: SshServer, creds: SessionCredentials) -> None:
    with pytest.raises(HostKeyMismatch, match=str(sshd.port)) as info:
        GuestConnection(sshd.host, sshd.port, creds, _other_public_key_line())
    assert "replaced" in str(info.value)


def test_nothing_listening_is_an_actionable_ssh_error(creds: SessionCredentials) -> None:
    port = _free_port()
    with pytest.raises(SSHError, match="sandbox is running"):
        GuestConnection("127.0.0.1", port, creds, _other_public_key_line(), connect_timeout=2)


def test_ping_is_true_for_a_live_guest_and_false_otherwise(
    sshd: SshServer, creds: SessionCredentials
) -> None:
    assert ping(sshd.host, sshd.port, creds, sshd.host_key) is True
    assert ping(sshd.host, _free_port(), creds, sshd.host_key, timeout=2) is False
    assert ping(sshd.host, sshd.port, creds, _other_public_key_line()) is False


# --- output handling and timeouts ------------------------------------------------------------


def test_fifty_megabytes_of_output_is_capped_in_bounded_memory(conn: GuestConnection) -> None:
    total = 50_000_000
    cap = 30_000
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = conn.run(
        f"printf S; head -c {total - 2} /dev/zero | tr '\\0' a; printf E", output_cap=cap
    )
    after_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    marker = CUT_MARKER % (total - cap)
    assert result.exit_status == 0
    assert result.stdout_cut == total - cap
    assert len(result.stdout) <= cap + len(marker)
    assert result.stdout == b"S" + b"a" * (cap // 2 - 1) + marker + b"a" * (cap // 2 - 1) + b"E"
    assert (after_kb - before_kb) < 20 * 1024, f"maxrss grew {after_kb - before_kb} KiB"


def test_a_flood_on_stderr_does_not_deadlock_stdout(conn: GuestConnection) -> None:
    result = conn.run(
        "head -c 5000000 /dev/zero >&2; echo out; head -c 5000000 /dev/zero >&2; echo done",
        timeout=60,
        output_cap=1000,
    )
    assert result.stdout == b"out\ndone\n"
    assert result.stderr_cut == 10_000_000 - 1000
    assert result.stderr.startswith(b"\0" * 500 + b"\n[fluid: ")


def test_command_past_its_timeout_is_killed_in_the_guest(conn: GuestConnection) -> None:
    marker = "sleep 31.5"
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="timeout") as info:
        conn.run(f"echo started; {marker}; echo never", timeout=2)
    assert time.monotonic() - started < 10
    partial = info.value.result
    assert isinstance(partial, CommandResult)
    assert partial.timed_out is True
    assert partial.stdout == b"started\n"
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the timed-out command still runs in the guest"
        time.sleep(0.1)


def test_host_side_deadline_closes_the_channel_of_an_unresponsive_command(
    conn: GuestConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A negative grace puts the host deadline before the guest's own timeout, as if the guest
    # had stopped enforcing it.
    monkeypatch.setattr(infra.transport.ssh, "HOST_GRACE_S", -1.5)
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as info:
        conn.run("echo hi; sleep 32.5", timeout=3)
    assert time.monotonic() - started < 3
    assert info.value.result.timed_out is True
    assert info.value.result.exit_status == -1
    assert info.value.result.stdout == b"hi\n"
    monkeypatch.undo()
    assert conn.run("echo still usable").stdout == b"still usable\n"


def test_a_command_that_exits_124_early_is_not_a_timeout(conn: GuestConnection) -> None:
    result = conn.run("exit 124", timeout=30)
    assert result.exit_status == 124
    assert result.timed_out is False


# --- files -----------------------------------------------------------------------------------


def test_sftp_upload_then_download_round_trips_bytes_and_mode(
    conn: GuestConnection, tmp_path: Path
) -> None:
    remote_dir = tmp_path / "guest"
    remote_dir.mkdir()
    data = os.urandom(300_000) + b"\x00\xff\n"
    remote = str(remote_dir / "blob.bin")
    conn.upload_bytes(data, remote, mode=0o640)
    assert conn.read_bytes(remote) == data
    assert conn.run(f"stat -c %a {remote}").stdout == b"640\n"

    local = tmp_path / "back" / "blob.bin"
    conn.download(remote, local)
    assert local.read_bytes() == data
    assert stat.S_IMODE(local.stat().st_mode) == 0o640

    script = tmp_path / "tool.sh"
    script.write_bytes(b"#!/bin/sh\necho tool\n")
    script.chmod(0o751)
    conn.upload(script, str(remote_dir / "tool.sh"))
    assert conn.run(str(remote_dir / "tool.sh")).stdout == b"tool\n"
    assert conn.run(f"stat -c %a {remote_dir / 'tool.sh'}").stdout == b"751\n"
    conn.upload(script, str(remote_dir / "tool-ro.sh"), mode=0o400)
    assert conn.run(f"stat -c %a {remote_dir / 'tool-ro.sh'}").stdout == b"400\n"


def test_run_sends_stdin_whole_and_closes_it(conn: GuestConnection) -> None:
    data = os.urandom(3 << 20)  # more than the channel's window: sent as the command reads it
    r = conn.run("sha256sum", stdin=data)
    assert r.exit_status == 0
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert conn.run("cat", stdin=b"").stdout == b""


def test_missing_remote_file_raises_file_not_found(conn: GuestConnection) -> None:
    with pytest.raises(FileNotFoundError):
        conn.read_bytes(f"/nonexistent-{uuid.uuid4().hex}")


# --- OpenSSH client --------------------------------------------------------------------------


def test_openssh_command_argv_runs_with_a_real_ssh_client(
    sshd: SshServer, creds: SessionCredentials, tmp_path: Path
) -> None:
    ssh = shutil.which("ssh")
    assert ssh, "openssh-client is missing; run scripts/setup-host.sh"
    key_path = creds.write_files(tmp_path / "session")
    known_hosts = tmp_path / "known_hosts"
    argv = openssh_command(sshd.host, sshd.port, key_path, sshd.host_key, known_hosts)
    assert argv[0] == "ssh"
    assert argv[-1] == f"root@{sshd.host}"
    assert known_hosts.read_text() == (
        f"[{sshd.host}]:{sshd.port} {' '.join(sshd.host_key.split()[:2])}\n"
    )
    # -F /dev/null keeps the tester's own ~/.ssh/config out of the way.
    full = [*argv[:-1], "-F", "/dev/null", "-o", "BatchMode=yes", argv[-1], "--", "echo", "hi"]
    done = subprocess.run(full, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"hi\n"
